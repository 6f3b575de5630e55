"""What ``streams.shell.chunking`` relies on in faust-streaming, pinned.

These tests fail when a Faust release changes the private parts the chunking consumer and the
table binding use: then re-read those parts, adapt ``chunking.py``, run the fault harness
(``python -m bench.faults``) and only then update the pin and the fingerprints below.
"""

import hashlib
import inspect
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import faust.stores.rocksdb
import faust.streams
import faust.tables.base
import pytest
from faust.transport import consumer as base_consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

from streams.settings import Settings
from streams.shell.app import CarwatchApp, create_app
from streams.shell.chunking import (
    Chunk,
    ChunkingConsumer,
    bound_to,
    partition_event,
    whole_key_runs,
)

REPO = Path(__file__).resolve().parents[3]

#: sha256 (first 16 hex digits) of the source of every Faust function whose behaviour
#: ``chunking.py`` mirrors, overrides or depends on, in faust-streaming 0.15.3.
FINGERPRINTS = {
    "transport.consumer.Consumer.getmany": "4b168d84882a70d6",
    "transport.consumer.Consumer._wait_next_records": "6218e1969a636b3f",
    "transport.consumer.Consumer.ack": "5fcf41cf45153475",
    "transport.consumer.Consumer._new_offset": "1d2c7ea89a7ad4f1",
    "transport.consumer.Consumer._add_gap": "4df2573ded7c1c2c",
    "transport.consumer.Consumer._drain_messages": "44a2500309e83c63",
    "transport.consumer.Consumer.perform_seek": "0e8c130ff4b0afd8",
    "transport.consumer.Consumer.on_buffer_full": "c8961679e0bcdce5",
    "transport.drivers.aiokafka.Consumer._to_message": "7c24f6511b2fcef7",
    "streams.current_event": "3b821f1a78d86a58",
    "tables.base.Collection._send_changelog": "ffe705dc73c1e67c",
    "tables.base.Collection.on_recovery_completed": "b1526fb39ea0e77e",
    "stores.rocksdb.Store._set": "4227e561e288d941",
    "stores.rocksdb.Store._get": "7ae8dfd6d7754a59",
}
SOURCES = {
    "transport.consumer.Consumer.getmany": base_consumer.Consumer.getmany,
    "transport.consumer.Consumer._wait_next_records": base_consumer.Consumer._wait_next_records,
    "transport.consumer.Consumer.ack": base_consumer.Consumer.ack,
    "transport.consumer.Consumer._new_offset": base_consumer.Consumer._new_offset,
    "transport.consumer.Consumer._add_gap": base_consumer.Consumer._add_gap,
    "transport.consumer.Consumer._drain_messages": base_consumer.Consumer._drain_messages,
    "transport.consumer.Consumer.perform_seek": base_consumer.Consumer.perform_seek,
    "transport.consumer.Consumer.on_buffer_full": base_consumer.Consumer.on_buffer_full,
    "transport.drivers.aiokafka.Consumer._to_message": driver.Consumer._to_message,
    "streams.current_event": faust.streams.current_event,
    "tables.base.Collection._send_changelog": faust.tables.base.Collection._send_changelog,
    "tables.base.Collection.on_recovery_completed": (
        faust.tables.base.Collection.on_recovery_completed
    ),
    "stores.rocksdb.Store._set": faust.stores.rocksdb.Store._set,
    "stores.rocksdb.Store._get": faust.stores.rocksdb.Store._get,
}


def pinned_faust() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("faust-streaming")]
    assert "==" in pin, f"faust-streaming must be pinned exactly: {pin}"
    return pin.split("==")[1]


def test_the_installed_faust_is_the_pinned_release() -> None:
    assert version("faust-streaming") == pinned_faust() == "0.15.3"


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_the_faust_code_chunking_relies_on_is_unchanged(name: str) -> None:
    source = inspect.getsource(SOURCES[name])
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == FINGERPRINTS[name], (
        f"faust {name} changed: re-check streams/shell/chunking.py (module docstring)"
    )


@dataclass
class Record:
    """The fields of an aiokafka ``ConsumerRecord`` a chunk uses."""

    offset: int
    topic: str = "carwatch.labs"
    partition: int = 0
    timestamp: int = 1_000
    timestamp_type: int = 0
    key: bytes = b"P1"
    value: bytes = b"{}"


@pytest.fixture
async def consumer(tmp_path: Path) -> Iterator[ChunkingConsumer]:
    app: CarwatchApp = create_app(Settings(data_dir=tmp_path))
    assert app.chunked_topics == {"carwatch.labs", "carwatch.clinical"}

    async def ignore(*args: object) -> None:
        return None

    made = app._new_transport().create_consumer(
        callback=ignore, on_partitions_revoked=ignore, on_partitions_assigned=ignore
    )
    assert isinstance(made, ChunkingConsumer)
    app.topics._acking_topics.add("carwatch.labs")  # what the conductor does for the agent
    yield made
    made._thread.thread_loop.close()  # the Kafka client thread's loop, never started here


def chunk(made: ChunkingConsumer, tp: TP, first: int, last: int) -> object:
    return made._chunk_message(tp, [Record(o) for o in range(first, last + 1)], 1)


async def test_a_chunk_is_one_message_at_its_last_offset(consumer: ChunkingConsumer) -> None:
    tp = TP("carwatch.labs", 0)
    message = chunk(consumer, tp, 10, 19)
    assert message.offset == 19 and message.tp == tp  # type: ignore[attr-defined]
    assert isinstance(message.value, Chunk)  # type: ignore[attr-defined]
    assert [r.offset for r in message.value.records] == list(range(10, 20))  # type: ignore[attr-defined]
    # the fetcher's gap detection sees the chunk's message follow the previous one
    assert consumer._read_offset[tp] == 18


async def test_the_commit_never_passes_an_unacknowledged_chunk(consumer: ChunkingConsumer) -> None:
    tp = TP("carwatch.labs", 0)
    consumer._committed_offset[tp] = 10
    first, second = chunk(consumer, tp, 10, 19), chunk(consumer, tp, 20, 29)
    assert consumer._new_offset(tp) is None
    assert consumer.ack(second)  # type: ignore[arg-type]
    assert consumer._new_offset(tp) is None  # the first chunk is still in the agent
    assert consumer.ack(first)  # type: ignore[arg-type]
    assert consumer._new_offset(tp) == 30  # the next offset to read


async def test_a_chunk_after_a_commit_inside_it_counts_from_the_commit(
    consumer: ChunkingConsumer,
) -> None:
    tp = TP("carwatch.labs", 0)
    consumer._committed_offset[tp] = 15  # re-delivered after a commit at 15
    assert consumer.ack(chunk(consumer, tp, 10, 19))  # type: ignore[arg-type]
    assert consumer._new_offset(tp) == 20


async def test_a_table_access_is_bound_to_the_given_event(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    event = partition_event(app, "carwatch.labs", 3, 1.0)
    assert faust.streams.current_event() is None
    with bound_to(event):
        assert faust.streams.current_event() is event
        assert app.patient_state.partition_for_key(b"P1") == 3
    assert faust.streams.current_event() is None


def test_a_chunk_never_ends_inside_one_patients_run_of_records() -> None:
    keys = [b"P1", b"P1", b"P2", b"P2", b"P2", b"P3", b"P1"]
    records = [Record(n, key=key) for n, key in enumerate(keys)]
    runs = [[r.offset for r in run] for run in whole_key_runs(records, 2)]
    assert runs == [[0, 1], [2, 3, 4], [5, 6]]
    assert [len(run) for run in whole_key_runs(records, 100)] == [7]
    assert [[r.offset for r in run] for run in whole_key_runs(records, 1)] == [
        [0, 1],
        [2, 3, 4],
        [5],
        [6],
    ]
