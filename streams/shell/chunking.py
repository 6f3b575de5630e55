"""Where the shell relies on Faust's internals: chunked delivery and binding table access.

Everything here uses private parts of faust-streaming (pinned in pyproject.toml);
``tests/unit/shell/test_chunking.py`` fails when a release changes any of them.

Chunked delivery (``ChunkingConsumer``): Faust hands every Kafka record through its consumer,
conductor, channel queue and stream one by one, at about 50 µs of Python per record on this
hardware -- five times the cost of decoding and checking the record itself, and a ceiling near
20,000 records/s however the agent batches (``stream.take``/``take_events``, the public API, batch
*after* that path). With ``CARWATCH_CHUNKED_DELIVERY`` (default) the consumer delivers each
fetched run of records of one input partition as *one* message whose value is a ``Chunk``.
Offsets stay exact for at-least-once: the chunk's message carries the offset of its last record,
and only when the agent acknowledges the chunk (after processing it) are the offsets before it
marked done -- the commit can never pass a record that was not processed. A chunk never ends
inside a run of one patient's records (``whole_key_runs``): the batch takes whole chunks, so the
results of a specimen fetched together are applied together. Everything else
(changelog recovery, other topics) goes through Faust's normal path. Relies on: the driver's
``Consumer.getmany`` / ``_wait_next_records`` / ``_to_message`` / ``flow_active`` /
``perform_seek`` / ``_buffered_partitions``, and the base consumer's ``_read_offset``, ``_gap``
and ``_committed_offset`` bookkeeping that ``ack`` and ``_new_offset`` do.

Table binding (``bound_to``, ``partition_event``): Faust's table takes the changelog partition,
and rocksdict its per-partition database, from the *current event* (a context variable). A batch
spans partitions, and the tick timer has no event at all, so the shell binds each read and write
to an event of the patient's own partition.
"""

import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

import faust
from faust import streams as faust_streams
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, EventT, Message


class ChunkedApp(Protocol):
    """What the consumer reads from its app (``streams.shell.app.CarwatchApp``)."""

    chunked_topics: frozenset[str]
    chunk_size: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records of one input partition, as fetched (aiokafka ``ConsumerRecord``)."""

    records: Sequence[Any]


class ChunkingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering input-topic records in chunks (module docstring)."""

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        chunked = cast(ChunkedApp, self.app).chunked_topics
        chunk_size = cast(ChunkedApp, self.app).chunk_size
        records, active = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:  # as upstream: log and let the fetcher retry
                self.log.warning(f"exception performing seek when flow not active {exc!r}")
            return
        for tp, fetched in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic not in chunked:
                for record in fetched:
                    yield tp, self._to_message(tp, record)
                continue
            for part in whole_key_runs(fetched, chunk_size):
                yield tp, self._chunk_message(tp, part, generation_id)

    def _chunk_message(self, tp: TP, part: Sequence[Any], generation_id: int) -> Message:
        last = part[-1]
        message = faust_aiokafka.ConsumerMessage(
            last.topic,
            last.partition,
            last.offset,
            cast(float, last.timestamp / 1000.0 if last.timestamp is not None else None),
            last.timestamp_type,
            None,
            None,
            cast(bytes, Chunk(part)),  # the agent unpacks it; no serializer touches it
            None,
            0,
            0,
            tp,
            generation_id=generation_id,
        )
        message.first_offset = part[0].offset  # type: ignore[attr-defined]
        # The fetcher adds offsets it jumps over as "done" at once (a gap); a chunk's earlier
        # offsets are not done until the chunk is acknowledged, see ``ack``.
        self._read_offset[tp] = last.offset - 1
        return message

    def ack(self, message: Message) -> bool:
        first = getattr(message, "first_offset", None)
        if first is not None and first < message.offset and not message.acked:
            committed = self._committed_offset[message.tp]
            begin = first if committed is None else max(first, committed)
            if begin < message.offset:
                gap = self._gap[message.tp]
                gap.addi(begin, message.offset)
                gap.merge_overlaps()
        return bool(super().ack(message))


def whole_key_runs(records: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``size`` records or a few more: a slice never ends inside a run of
    one key, so a patient's records that were fetched together -- a specimen's results -- reach
    one batch and are applied together (docs/clinical-spec.md section 0)."""
    start = 0
    while start < len(records):
        end = min(start + size, len(records))
        while end < len(records) and records[end].key == records[end - 1].key:
            end += 1
        yield records[start:end]
        start = end


class ChunkingTransport(faust_aiokafka.Transport):
    Consumer = ChunkingConsumer


@contextmanager
def bound_to(event: EventT | None) -> Iterator[None]:
    """Make ``event`` Faust's current event while a table entry is read or written."""
    var = faust_streams._current_event
    token = var.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        var.reset(token)


def partition_event(app: AppT, topic: str, partition: int, timestamp: float) -> EventT:
    """An event of ``topic``/``partition`` that stands for no record (for ``bound_to``)."""
    message = Message(topic, partition, -1, timestamp, 0, None, None, None, None)
    return faust.Event(app, None, None, None, message)


def flow_of(consumer: Any) -> dict[str, Any]:
    """What Faust's consumer holds back, for the stall report (diagnostics only)."""

    def names(tps: Any) -> list[str]:
        return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps or ())

    return {
        "flow_active": getattr(consumer, "flow_active", None),
        "paused": names(getattr(consumer, "_paused_partitions", None)),
        "buffer_full": names(getattr(consumer, "_buffered_partitions", None)),
        "active": names(getattr(consumer, "_active_partitions", None)),
    }
