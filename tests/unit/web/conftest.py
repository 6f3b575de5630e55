"""Read-model fixtures: a migrated SQLite file per test, and a record numberer."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.web.db import Database, connect
from streams.web.schema import migrate
from tests.unit.web.webtools import Feed


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = connect(f"sqlite:///{tmp_path / 'web.db'}")
    migrate(database)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def feed() -> Feed:
    return Feed()
