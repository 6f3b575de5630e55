"""The Faust agent, tick timer and hooks around ``streams.pipeline.monitor.Monitor`` (thin).

Per batch: records in → ``Monitor.process`` → alerts and dead letters sent → *wait until the
broker has acknowledged them* → states written to the table (``Outgoing`` says why this order).
The agent and the tick timer share one lock: both update the cached states, and a state one of
them updated must not be written by the other before its alerts are acknowledged.

Patients are indexed (``AlertIndex``: open alerts for the gauges, keys for the tick) from the
table itself once its partitions are recovered, from each value's open-alert summary, and kept
up to date by the batches; a revoked partition leaves the index and the state cache with its
patients.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka.partitioner import murmur2
from faust.types import TP, AppT, EventT
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, start_http_server

from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import CLINICAL_TOPIC, LABS, InRecord, Monitor, Outgoing
from streams.pipeline.state_codec import StateFormatError
from streams.pipeline.store import PatientStates, open_alerts_of
from streams.settings import Settings
from streams.shell.chunking import Chunk, bound_to, flow_of, partition_event
from streams.shell.heap import Heap
from streams.shell.topics import PatientTable, Topics

log = logging.getLogger(__name__)

#: Patients ticked under one hold of the lock (about 10 ms with year-long histories), and the
#: pause after each: a batch needs a few turns of the event loop to form and reach the lock, which
#: ``sleep(0)`` does not give -- the tick of 2,000 patients then held the agent off for 0.3 s.
TICK_SLICE = 64
TICK_PAUSE_SECONDS = 0.005
#: Seconds without a batch, while input records wait, after which the worker logs its
#: consumer's state (assignment, paused partitions, lag) once per period.
STALL_SECONDS = 30.0
#: Seconds between two full garbage collections of the frozen heap (``streams.shell.heap``).
FULL_COLLECTION_SECONDS = 3600.0


class TableStore:
    """``StateStore`` over the Faust table; each access bound to the record's partition."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes, origin: Any) -> bytes | None:
        with bound_to(origin):
            value = self.table.get(key)
        return value if value is None else bytes(value)

    def put(self, key: bytes, value: bytes, origin: Any) -> None:
        with bound_to(origin):
            self.table[key] = value


def records_of(events: Sequence[EventT], labels: dict[str, str]) -> list[InRecord]:
    """The monitor's records of a batch of events (a chunk event holds many records)."""
    records: list[InRecord] = []
    for event in events:
        value = event.value
        message = event.message
        topic = labels.get(message.topic)
        if isinstance(value, Chunk):
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
            key = message.key if message.key is not None else event.key
            records.append(
                InRecord(
                    key, value, topic, message.partition, message.offset, message.timestamp, event
                )
            )
    return records


class Lag:
    """``carwatch_consumer_lag_messages`` from the high-water marks of the batches' partitions,
    and the stall report: when no batch came for ``STALL_SECONDS`` while records wait."""

    def __init__(self, app: AppT, metrics: PipelineMetrics, labels: dict[str, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.labels = labels
        self.by_tp: dict[TP, int] = {}
        self.processed: dict[TP, int] = {}
        self.last_batch = time.monotonic()

    def track(self, records: Sequence[InRecord]) -> None:
        self.last_batch = time.monotonic()
        last: dict[TP, int] = {}
        for record in records:
            if record.origin is not None:
                last[record.origin.message.tp] = record.offset
        self.processed.update(last)
        try:
            for tp, offset in last.items():
                highwater = self.app.consumer.highwater(tp)
                if highwater is not None:
                    self.by_tp[tp] = max(0, highwater - offset - 1)
        except Exception:  # no consumer (agent.test_context): lag is not known
            return
        per_topic: Counter[str] = Counter()
        for tp, n in self.by_tp.items():
            per_topic[self.labels.get(tp.topic, LABS)] += n
        for topic in (LABS, CLINICAL_TOPIC):
            self.metrics.consumer_lag.labels(topic).set(per_topic[topic])

    def forget(self, revoked: Set[TP]) -> None:
        for tp in [tp for tp in self.by_tp if tp in revoked]:
            del self.by_tp[tp]
        for tp in [tp for tp in self.processed if tp in revoked]:
            del self.processed[tp]

    def stall(self) -> str | None:
        """One line on the consumer when records wait and no batch came for a while."""
        idle = time.monotonic() - self.last_batch
        if idle < STALL_SECONDS or self.app.rebalancing:
            return None
        consumer = self.app.consumer
        waiting = {}
        for tp in consumer.assignment():
            if tp.topic in self.labels:
                highwater = consumer.highwater(tp)
                done = self.processed.get(tp, -1)
                if highwater is not None and highwater > done + 1:
                    waiting[f"{tp.topic}[{tp.partition}]"] = highwater - done - 1
        if not waiting:
            return None
        self.last_batch = time.monotonic()  # once per period
        return (
            f"no batch for {idle:.0f} s while {sum(waiting.values())} input records wait: "
            f"waiting={waiting} {flow_of(consumer)} "
            f"assigned={sorted(f'{tp.topic}[{tp.partition}]' for tp in consumer.assignment())}"
        )


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What ``register`` put on the app: the agent, the timer, the monitor and its metrics."""

    monitor: Monitor
    states: PatientStates
    metrics: PipelineMetrics
    registry: CollectorRegistry
    agent: Any
    timer: Any


def register(app: AppT, settings: Settings, topics: Topics, table: PatientTable) -> Pipeline:
    """Define the agent, the timer and the hooks on ``app``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    metrics = PipelineMetrics(registry)
    monitor = Monitor(settings.load_policy(), metrics)
    states = PatientStates(TableStore(table), settings.state_cache_size)
    labels = {settings.labs_topic: LABS, settings.clinical_topic: CLINICAL_TOPIC}
    take = 2 * settings.partitions if settings.chunked_delivery else settings.batch_size
    lock = asyncio.Lock()
    lag = Lag(app, metrics, labels)

    def owned() -> set[int] | None:
        if not app.consumer_generation_id:
            return None  # not a running worker (agent.test_context)
        return {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == settings.labs_topic
        }

    async def deliver(out: Outgoing) -> None:
        """Send, wait for the broker's acknowledgement, then write the states."""
        try:
            sent = [topics.alerts.send_soon(key=k, value=v) for k, v in out.alerts]
            sent += [topics.deadletter.send_soon(key=k, value=v) for k, v in out.deadletters]
            if sent:
                await asyncio.gather(*sent)
        except BaseException:
            states.forget()  # updated in memory, not written: the store is the truth again
            raise
        out.persist(states)

    early_commits: dict[int, asyncio.Task[bool]] = {}

    def commit_first_batch() -> None:
        """Commit right after the first batch of an assignment, not a commit interval later: a
        restarted worker shows progress within seconds, and one that keeps crashing soon after
        its start still moves forward. (The batch's events are acknowledged when the agent asks
        for the next batch, hence the task.)"""
        generation = app.consumer_generation_id
        if generation and generation not in early_commits:
            early_commits.clear()
            early_commits[generation] = asyncio.ensure_future(commit_soon())

    async def commit_soon() -> bool:
        await asyncio.sleep(0.05)
        return bool(await app.consumer.commit())

    @app.agent(topics.inputs, name="monitor")
    async def monitor_agent(stream: Any) -> AsyncIterator[Outgoing]:
        async for events in stream.take_events(take, within=settings.batch_timeout_seconds):
            records = records_of(events, labels)
            async with lock:
                out = monitor.process(records, states)
                await deliver(out)
            lag.track(records)
            monitor.publish_gauges(owned())
            yield out
            commit_first_batch()

    @app.timer(interval=settings.tick_interval_seconds)
    async def tick_patients() -> None:
        partitions = owned()
        now = datetime.now(UTC)
        origins = {
            p: partition_event(app, settings.labs_topic, p, now.timestamp())
            for p in (partitions if partitions is not None else range(settings.partitions))
        }
        entries = [(k, p, origins[p]) for k, p in monitor.index.keys(partitions)]
        raised = 0
        for start in range(0, len(entries), TICK_SLICE):
            async with lock:
                still = owned()  # a rebalance between two slices takes partitions away
                part = [
                    e for e in entries[start : start + TICK_SLICE] if still is None or e[1] in still
                ]
                out = monitor.tick(now, part, states)
                await deliver(out)
            raised += len(out.alert_events)
            await asyncio.sleep(TICK_PAUSE_SECONDS)
        monitor.publish_gauges(partitions)
        if raised:
            log.info("tick: %d alert events", raised)

    @app.timer(interval=STALL_SECONDS / 3)
    async def report_stall() -> None:
        report = lag.stall()
        if report is not None:
            log.warning("stalled: %s", report)

    heap = Heap(max(1, round(FULL_COLLECTION_SECONDS / settings.gc_freeze_interval_seconds)))

    @app.timer(interval=settings.gc_freeze_interval_seconds)
    async def settle_heap() -> None:
        heap.settle()

    recovery_began = [time.monotonic()]

    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        recovery_began[0] = time.monotonic()
        metrics.recovery_in_progress.set(1)

    cast(Any, app.on_partitions_assigned).connect(on_assigned)

    async def on_recovered(active: Set[TP]) -> None:
        """Index the patients of the recovered partitions from the table; the recovery ends
        with it (``carwatch_table_recovery_seconds``: assignment to ready)."""
        partitions = {tp.partition for tp in active}
        monitor.index.forget(partitions)
        unreadable = 0
        for n, (key, value) in enumerate(table.items()):
            partition = _partition_of(bytes(key), settings.partitions)
            if partition not in partitions:
                continue
            try:
                monitor.index.update(bytes(key), partition, open_alerts_of(bytes(value)))
            except StateFormatError:
                unreadable += 1
            if n % 2000 == 1999:
                await asyncio.sleep(0)
        if unreadable:
            log.error("%d unreadable patient states in the table", unreadable)
        monitor.publish_gauges(owned())
        metrics.recovery_seconds.set(time.monotonic() - recovery_began[0])
        metrics.recovery_in_progress.set(0)

    table.on_recovered = on_recovered

    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == settings.labs_topic}
        monitor.index.forget(gone)
        states.forget(gone)
        lag.forget(revoked)
        monitor.publish_gauges(owned())

    cast(Any, app.on_partitions_revoked).connect(on_revoked)

    @app.task
    async def serve_metrics() -> None:
        from streams.logs import protect

        for handler in logging.getLogger().handlers:  # third-party log lines too
            protect(handler)
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    return Pipeline(monitor, states, metrics, registry, monitor_agent, tick_patients)


def _partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), which every producer of the inputs uses
    (docs/architecture.md: topics keyed by patient id), so the table's partition of a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
