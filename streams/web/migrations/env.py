"""Alembic environment: runs on the connection ``streams.web.schema.migrate`` hands over.

There is no ``alembic.ini``: ``carwatch web`` migrates its database itself at start-up, and a
developer adds a revision with ``streams.web.schema.revision`` (docs/web.md "Migrations").
"""

from alembic import context

from streams.web.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
