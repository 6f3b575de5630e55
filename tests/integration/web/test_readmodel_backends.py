"""The read model on both shipped backends: the embedded SQLite file and a real PostgreSQL
(Debian's server, a throw-away cluster on 127.0.0.1 in the test's tmp folder)."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import TopicPartition

from streams.core.policy import DEFAULT_POLICY
from streams.settings import Settings
from streams.web.db import Database, connect
from streams.web.ingest import Ingester, OffsetConflict
from streams.web.metrics import WebMetrics
from streams.web.readmodel import Source
from streams.web.schema import clear_derived, migrate
from tests.integration.conftest import free_port
from tests.integration.web.conftest import snapshot
from tests.unit.web.webtools import Feed, apply_all, story

pytestmark = pytest.mark.integration


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else None


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgresql_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        message = "Debian's postgresql is missing: run scripts/install-web-tools.sh (make setup)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # not under pytest's tmp root: that is private to root, and the server runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="carwatch-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "carwatch", "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -h 127.0.0.1 -k {folder} -F"
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql+psycopg://carwatch@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'web.db'}"
    else:
        url = request.getfixturevalue("postgresql_url")
    db = connect(url)
    migrate(db)
    clear_derived(db)  # the PostgreSQL cluster is shared by this module's tests
    try:
        yield db
    finally:
        db.dispose()


def test_postgresql_holds_what_sqlite_holds(postgresql_url: str, tmp_path: Path) -> None:
    events, alerts = story()
    urls = [f"sqlite:///{tmp_path / 'web.db'}", postgresql_url]
    for url in urls:
        db = connect(url)
        migrate(db)
        migrate(db)  # idempotent
        feed = Feed()
        records = feed.wire(events) + feed.alerts(alerts)
        first = apply_all(db, records)
        assert apply_all(db, records) == ["duplicate"] * len(records)
        assert "applied" in first
        db.dispose()
    assert snapshot(urls[0]) == snapshot(urls[1])


def test_an_offset_moved_by_another_ingester_rolls_the_batch_back(any_db: Database) -> None:
    events, _ = story()
    feed = Feed()
    batch = feed.wire(events)  # the infusion, then the labs
    ingester = Ingester(Settings(), any_db, DEFAULT_POLICY, WebMetrics())
    partitions = {
        TopicPartition("carwatch.clinical", 0): (Source.CLINICAL, 0),
        TopicPartition("carwatch.labs", 0): (Source.LABS, 0),
    }
    # what _assign does after reading the (empty) offsets table: start at 0, no rows yet
    ingester._partitions = partitions
    ingester._next = dict.fromkeys(partitions, 0)
    ingester._stored = set()
    other = Ingester(Settings(), any_db, DEFAULT_POLICY, WebMetrics())
    other._partitions, other._next, other._stored = dict(partitions), dict(ingester._next), set()

    other._commit(batch[:1])  # the other process got there first
    with pytest.raises(OffsetConflict):
        ingester._commit(batch)
    before = snapshot(any_db.url)
    assert len(before["patients"]) == 1  # only the other process's infusion
    assert before["lab_results"] == []
    other._commit(batch[1:])  # it goes on from where it was
    assert len(snapshot(any_db.url)["lab_results"]) == len(batch) - 1
