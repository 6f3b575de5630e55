"""Schema migrations of the read model (Alembic), run by ``carwatch web`` at start-up.

Why Alembic: the same revision files upgrade the embedded SQLite file and a hospital's
PostgreSQL, each revision is reviewed code, and ``alembic_version`` tells which one a database is
at. ``tests/unit/web/test_migrations.py`` runs every revision on an empty database and compares
the result with the models (``streams.web.db``): a model change without its revision fails there.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import delete

from streams.web.db import DERIVED_TABLES, Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(db: Database) -> None:
    """Bring the database to the newest revision (idempotent)."""
    with db.writer.begin() as connection:
        command.upgrade(_config(connection), "head")


def revision(db: Database, message: str) -> None:
    """Developer tool: write a new revision with the difference between ``db`` and the models."""
    with db.writer.begin() as connection:
        command.revision(_config(connection), message=message, autogenerate=True)


def clear_derived(db: Database) -> None:
    """Empty every table that is rebuilt from the topics, in one transaction (``--rebuild``).

    The acknowledgement outbox, sessions and ``web_meta`` stay: they are not on any topic.
    """
    with db.write() as session:
        for table in DERIVED_TABLES:
            session.execute(delete(table))
