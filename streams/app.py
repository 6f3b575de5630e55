"""The Faust application: topics, the ``patient_state`` table, and how records reach the agent.

``faust -A streams.app worker`` or ``carwatch worker`` runs it; settings come from ``CARWATCH_*``
(``streams.settings``). Choices, and why (DESIGN.md "Real components", FACTS.md):

- ``processing_guarantee="at_least_once"``: alert ids are deterministic, so a record processed
  twice re-sends byte-identical events that subscribers drop by ``event_id``; Faust's
  exactly-once mode has open duplicate and crash reports.
- Input topics (``carwatch.labs``, ``carwatch.clinical``) and the table's changelog have the same
  partition count and are keyed by patient id: one patient's records, state and changelog live
  on one partition of one worker (co-partitioning). Values are raw bytes; the agent decodes.
- ``web_tables_enabled=False``: Faust's ``/table`` endpoint would serve patient state over HTTP.
  The web server binds to ``CARWATCH_WEB_HOST`` (127.0.0.1) explicitly: ``faust worker`` would
  otherwise listen on 0.0.0.0.
- The table's values are ``streams.state_codec`` bytes (``value_serializer="raw"``).

Chunked delivery (``ChunkingConsumer``): Faust hands every Kafka record through its consumer,
conductor, channel queue and stream one by one, at about 50 µs of Python per record on this
hardware -- five times the cost of decoding and checking the record itself, and a ceiling near
20,000 records/s however the agent batches. With ``CARWATCH_CHUNKED_DELIVERY`` (default) the
consumer delivers each fetched run of records of one input partition as *one* message whose value
is a ``Chunk``. Offsets stay exact for at-least-once: the chunk's message carries the offset of
its last record, and only when the agent acknowledges the chunk (after processing it) are the
offsets before it marked done -- the commit can never pass a record that was not processed.
Everything else (changelog recovery, other topics) goes through Faust's normal path.
"""

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message

from streams import agents
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records of one input partition, as fetched (aiokafka ``ConsumerRecord``)."""

    records: Sequence[Any]


class ChunkingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering input-topic records in chunks (module docstring)."""

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        chunked = cast(CarwatchApp, self.app).chunked_topics
        chunk_size = cast(CarwatchApp, self.app).chunk_size
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
            for start in range(0, len(fetched), chunk_size):
                part = fetched[start : start + chunk_size]
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


class ChunkingTransport(faust_aiokafka.Transport):
    Consumer = ChunkingConsumer


class CarwatchApp(faust.App):
    """``faust.App`` with the chunking consumer for ``chunked_topics``."""

    chunked_topics: frozenset[str] = frozenset()
    chunk_size: int = 1000

    def _new_transport(self) -> Any:
        if not self.chunked_topics:
            return super()._new_transport()
        return ChunkingTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> CarwatchApp:
    app = CarwatchApp(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=settings.faust_credentials(),
        broker_session_timeout=settings.broker_session_timeout_seconds,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        store=settings.store,
        datadir=str(settings.data_dir),
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_tables_enabled=False,
        cython_optimizations=True,
        # Chunks are large: a short queue keeps memory bounded while the agent catches up.
        stream_buffer_maxsize=64 if settings.chunked_delivery else 4096,
        table_standby_replicas=0,
    )
    if settings.chunked_delivery:
        app.chunked_topics = frozenset((settings.labs_topic, settings.clinical_topic))
        app.chunk_size = settings.batch_size
    return app


settings = Settings()
app = create_app(settings)

#: Both inputs, consumed by one agent: a patient's lab results and clinical events sit on the
#: same partition number of the two topics, so one worker sees all of a patient's records.
inputs = app.topic(
    settings.labs_topic,
    settings.clinical_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
)
alerts_topic = app.topic(
    settings.alerts_topic,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
)
deadletter_topic = app.topic(
    settings.deadletter_topic,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
)

#: Called with every changelog record the table recovers (``streams.agents`` indexes them).
changelog_listeners: list[Callable[[EventT], Awaitable[None]]] = []


async def _on_changelog_event(event: EventT) -> None:
    for listener in changelog_listeners:
        await listener(event)


#: Patient id (UTF-8 bytes) → ``streams.state_codec`` bytes; enrolled patients only. Its
#: changelog ``<app id>-patient_state-changelog`` has the inputs' partition count.
patient_state = app.Table(
    "patient_state",
    key_type=bytes,  # bytes → the "raw" serializer for keys and values
    value_type=bytes,
    partitions=settings.partitions,
    on_changelog_event=_on_changelog_event,
)

# The agent, the timer and the startup hooks (``faust -A streams.app`` finds them on ``app``).
pipeline = agents.register(sys.modules[__name__])

__all__ = [
    "alerts_topic",
    "app",
    "deadletter_topic",
    "inputs",
    "patient_state",
    "pipeline",
    "settings",
]
