"""The Faust agent, tick timer and hooks around ``streams.pipeline.monitor.Monitor`` (thin)."""

import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import (
    CLINICAL_TOPIC,
    LABS,
    InRecord,
    Monitor,
    Outgoing,
    open_alerts,
)
from streams.pipeline.state_codec import decode_state

log = logging.getLogger(__name__)


@contextmanager
def bound_to(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event while a table entry is read or written.

    Faust's table takes the changelog partition, and rocksdict its per-partition store, from the
    current event; in a batch that spans partitions the right one is the patient's own record.
    """
    from faust import streams as faust_streams

    var = faust_streams._current_event
    token = var.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        var.reset(token)


class TableStore:
    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes, origin: Any) -> bytes | None:
        with bound_to(origin):
            value = self.table.get(key)
        return value if value is None else bytes(value)

    def put(self, key: bytes, value: bytes, origin: Any) -> None:
        with bound_to(origin):
            self.table[key] = value


def _records_of(events: Sequence[Any], labels: dict[str, str]) -> list[InRecord]:
    from streams.shell.chunking import Chunk

    records: list[InRecord] = []
    for event in events:
        value = event.value
        message = event.message
        if isinstance(value, Chunk):
            topic = labels.get(message.topic)
            records.extend(
                InRecord(
                    r.key,
                    r.value,
                    topic,
                    r.partition,
                    r.offset,
                    r.timestamp / 1000.0 if r.timestamp is not None else None,
                    event,
                )
                for r in value.records
            )
        else:
            records.append(
                InRecord(
                    message.key if message.key is not None else event.key,
                    value,
                    labels.get(message.topic),
                    message.partition,
                    message.offset,
                    message.timestamp,
                    event,
                )
            )
    return records


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What ``register`` put on the app: the agent, the timer, the monitor and its metrics."""

    monitor: Monitor
    metrics: PipelineMetrics
    registry: CollectorRegistry
    agent: Any
    timer: Any


def register(app_module: Any) -> Pipeline:
    """Define the agent, the timer and the hooks on the app of ``streams.shell.app``."""
    import faust
    from faust.types import TP

    app = app_module.app
    settings = app_module.settings
    policy = settings.load_policy()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = PipelineMetrics(registry)
    monitor = Monitor(policy, metrics)
    store = TableStore(app_module.patient_state)
    labels = {settings.labs_topic: LABS, settings.clinical_topic: CLINICAL_TOPIC}
    take = 2 * settings.partitions if settings.chunked_delivery else settings.batch_size
    lag: dict[TP, int] = {}

    def owned() -> set[int] | None:
        if not app.consumer_generation_id:
            return None  # not a running worker (agent.test_context)
        return {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == settings.labs_topic
        }

    def send(out: Outgoing) -> None:
        for key, value in out.alerts:
            app_module.alerts_topic.send_soon(key=key, value=value)
        for dl_key, value in out.deadletters:
            app_module.deadletter_topic.send_soon(key=dl_key, value=value)

    def track_lag(records: Sequence[InRecord]) -> None:
        last: dict[TP, int] = {}
        for record in records:
            if record.origin is not None:
                last[record.origin.message.tp] = record.offset
        try:
            for tp, offset in last.items():
                highwater = app.consumer.highwater(tp)
                if highwater is not None:
                    lag[tp] = max(0, highwater - offset - 1)
        except Exception:  # no consumer (tests): lag is not known
            return
        per_topic: Counter[str] = Counter()
        for tp, n in lag.items():
            per_topic[labels.get(tp.topic, LABS)] += n
        for topic in (LABS, CLINICAL_TOPIC):
            metrics.consumer_lag.labels(topic).set(per_topic[topic])

    @app.agent(app_module.inputs, name="monitor")
    async def monitor_agent(stream: Any) -> AsyncIterator[Outgoing]:
        async for events in stream.take_events(take, within=settings.batch_timeout_seconds):
            records = _records_of(events, labels)
            out = monitor.process(records, store)
            send(out)
            out.persist(store)  # after the alerts: see ``Outgoing``
            track_lag(records)
            monitor.publish_gauges(owned())
            yield out

    @app.timer(interval=settings.tick_interval_seconds)
    async def tick_patients() -> None:
        partitions = owned()
        now = datetime.now(UTC)
        origins: dict[int, Any] = {}

        def origin(partition: int) -> Any:
            if partition not in origins:
                message = faust.types.Message(
                    settings.labs_topic, partition, -1, now.timestamp(), 0, None, None, None, None
                )
                origins[partition] = faust.Event(app, None, None, None, message)
            return origins[partition]

        entries = [(k, p, origin(p)) for k, p in monitor.index.keys(partitions)]
        out = monitor.tick(now, entries, store)
        send(out)
        out.persist(store)  # after the alerts: see ``Outgoing``
        monitor.publish_gauges(partitions)
        if out.alert_events:
            log.info("tick: %d alert events", len(out.alert_events))

    async def on_changelog(event: Any) -> None:
        # Must not raise: Faust's recovery loop stops at the first exception of a callback.
        key, value, partition = event.message.key, event.message.value, event.message.partition
        if key is None:
            return
        try:
            state = None if value is None else decode_state(bytes(value))
        except Exception as exc:
            log.error(
                "unreadable patient state in the changelog (partition %d): %s",
                partition,
                type(exc).__name__,
            )
            return
        monitor.index.update(bytes(key), partition, None if state is None else open_alerts(state))

    app_module.changelog_listeners.append(on_changelog)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == settings.labs_topic}
        monitor.index.forget(gone)
        for tp in [tp for tp in lag if tp in revoked]:
            del lag[tp]
        monitor.publish_gauges(owned())

    @app.on_rebalance_complete.connect
    async def on_rebalanced(sender: Any, **kwargs: Any) -> None:
        monitor.publish_gauges(owned())

    @app.task
    async def serve_metrics() -> None:
        from streams.logs import protect

        for handler in logging.getLogger().handlers:  # third-party log lines too
            protect(handler)
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    return Pipeline(monitor, metrics, registry, monitor_agent, tick_patients)
