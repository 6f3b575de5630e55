"""The Alembic revisions build exactly the schema the models describe."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from streams.web.db import Base, Database
from streams.web.schema import migrate


def test_migrations_match_the_models(db: Database) -> None:
    with db.writer.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrating_twice_changes_nothing(db: Database) -> None:
    migrate(db)
    tables = set(inspect(db.reader).get_table_names())
    assert set(Base.metadata.tables) | {"alembic_version"} == tables
