"""The Faust application: topics, the ``patient_state`` table, and how records reach the agent.

``faust -A streams.shell.app worker`` or ``carwatch worker`` runs it; settings come from ``CARWATCH_*``
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
- The table's values are ``streams.pipeline.state_codec`` bytes (``value_serializer="raw"``).

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
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import EventT

from streams.settings import Settings
from streams.shell import agents
from streams.shell.chunking import ChunkingTransport

log = logging.getLogger(__name__)


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

#: Called with every changelog record the table recovers (``streams.shell.agents`` indexes them).
changelog_listeners: list[Callable[[EventT], Awaitable[None]]] = []


async def _on_changelog_event(event: EventT) -> None:
    for listener in changelog_listeners:
        await listener(event)


#: Patient id (UTF-8 bytes) → ``streams.pipeline.state_codec`` bytes; enrolled patients only. Its
#: changelog ``<app id>-patient_state-changelog`` has the inputs' partition count.
patient_state = app.Table(
    "patient_state",
    key_type=bytes,  # bytes → the "raw" serializer for keys and values
    value_type=bytes,
    partitions=settings.partitions,
    on_changelog_event=_on_changelog_event,
)

# The agent, the timer and the startup hooks (``faust -A streams.shell.app`` finds them on ``app``).
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
