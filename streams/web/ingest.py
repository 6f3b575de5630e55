"""The ingester: Kafka topics into the read model, exactly once, in merged order.

It runs in a thread of ``carwatch web`` (kafka-python's blocking client; the pages never wait
for it) or alone (``carwatch web --once``: read to the end, then exit).

- No consumer group: every partition of the four topics is assigned to this process, and the
  position to resume from is the database's ``consumer_offsets``, written in the same
  transaction as the rows the records produced. A crash between two transactions re-reads
  exactly the records whose rows were rolled back: nothing lost, nothing doubled.
- Several ingesters may share one database (several ``carwatch web`` processes on one
  PostgreSQL): each transaction moves an offset only from the value this process last saw
  (``UPDATE ... WHERE next_offset = :expected``); if another process moved it, the transaction
  rolls back and this one re-reads from the database's offsets. ``--no-ingest`` serves pages
  without ingesting at all.
- Order: ``streams.web.merge`` (timestamp order across topics, so an ``infusion`` is applied
  before the labs it enrols and a rebuild equals a catch-up).
- Broker down: the loop backs off and retries; ``ingest_status`` keeps the time the broker last
  answered and the time the model was last caught up, which every page shows.
- Rejected alert or ack records are published to the dead-letter topic before the transaction
  that skips them commits (the worker dead-letters its own inputs).

Log lines name topics, counts and exception types, never a record's content.
"""

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from schemas.deadletter import DeadLetter
from streams.core.policy import Policy
from streams.kafka_clients import require_reachable
from streams.pipeline.topics import TopicError, ensure_topics
from streams.settings import Settings
from streams.web.db import ConsumerOffset, Database, IngestStatus
from streams.web.merge import Merger, Partition
from streams.web.metrics import WebMetrics
from streams.web.readmodel import Incoming, ReadOutcome, Source, apply_record

log = logging.getLogger(__name__)

STATUS_ROW = "ingest"


class OffsetConflict(Exception):
    """Another ingester moved an offset this one was about to move."""


def topic_names(settings: Settings) -> dict[Source, str]:
    return {
        Source.CLINICAL: settings.clinical_topic,
        Source.LABS: settings.labs_topic,
        Source.ALERTS: settings.alerts_topic,
        Source.ACKS: settings.acks_topic,
    }


@dataclass
class Ingester:
    settings: Settings
    db: Database
    policy: Policy
    metrics: WebMetrics
    batch_size: int = 500
    poll_ms: int = 300
    #: seconds between writes of ``ingest_status`` while nothing else changes
    status_every_s: float = 2.0
    #: seconds between checks for new topics or partitions
    refresh_every_s: float = 30.0
    clock: Callable[[], float] = time.time
    topics: dict[Source, str] = field(init=False)
    _consumer: Any = field(default=None, init=False)
    _producer: Any = field(default=None, init=False)
    _partitions: dict[TopicPartition, Partition] = field(default_factory=dict, init=False)
    #: next offset to apply per partition, as this process last committed or read it
    _next: dict[TopicPartition, int] = field(default_factory=dict, init=False)
    #: partitions that have a ``consumer_offsets`` row (the others get one on first commit)
    _stored: set[TopicPartition] = field(default_factory=set, init=False)
    _reachable: bool | None = field(default=None, init=False)
    _merger: Merger = field(default_factory=Merger, init=False)
    _status_written: float = field(default=0.0, init=False)
    _connected_at: float = field(default=0.0, init=False)
    _caught_up: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.topics = topic_names(self.settings)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until_caught_up: bool = False) -> bool:
        """Ingest until ``stop`` is set (or, with ``until_caught_up``, until lag 0).

        Returns True when it stopped caught up.
        """
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    lag = self.step()
                    backoff = 0.5
                except (KafkaError, OSError, TopicError) as exc:
                    self._down(exc)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except OffsetConflict:
                    log.info("another ingester moved the offsets; re-reading from the database")
                    self._disconnect()
                    continue
                if until_caught_up and lag == 0:
                    return True
        finally:
            self._disconnect()
        return False

    def step(self) -> int:
        """One poll: fetch, apply what the merge releases, report lag. Returns the total lag."""
        consumer = self._connect()
        polled = consumer.poll(timeout_ms=self.poll_ms, max_records=self.batch_size * 4)
        for tp, records in polled.items():
            source, partition = self._partitions[tp]
            self._merger.add(
                Incoming(source, partition, r.offset, r.timestamp, r.value) for r in records
            )
        ends = consumer.end_offsets(list(self._partitions))
        unread = {self._partitions[tp]: consumer.position(tp) < ends[tp] for tp in ends}
        while batch := self._merger.release(unread, self.clock(), self.batch_size):
            self._commit(batch)
        lag = self._report(ends)
        if self.clock() - self._connected_at > self.refresh_every_s and self._topology_changed():
            self._disconnect()
        return lag

    # -- connecting -------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._consumer is not None:
            return self._consumer
        if self.settings.create_topics:
            ensure_topics(self.settings, list(self.topics.values()), timeout_s=5)
        require_reachable(self.settings.bootstrap_servers)  # else a failed consumer leaks a thread
        consumer = KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            # a stored offset that retention has since deleted: go on from the oldest record
            auto_offset_reset="earliest",
            client_id=f"{self.settings.app_id}-web",
            request_timeout_ms=10_000,
            **self.settings.kafka_python_config(),
        )
        try:
            self._assign(consumer)
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        self._connected_at = self.clock()
        log.info("reading %d partitions of %d topics", len(self._partitions), len(self.topics))
        return consumer

    def _assign(self, consumer: Any) -> None:
        partitions: dict[TopicPartition, Partition] = {}
        for source, name in self.topics.items():
            for number in sorted(consumer.partitions_for_topic(name) or ()):
                partitions[TopicPartition(name, number)] = (source, number)
        consumer.assign(list(partitions))
        stored = self._stored_offsets()
        beginnings = consumer.beginning_offsets(list(partitions)) if partitions else {}
        self._next, self._stored = {}, set()
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self._stored.add(tp)
            self._next[tp] = offset if offset is not None else beginnings[tp]
            consumer.seek(tp, self._next[tp])
        self._partitions = partitions
        self._merger.clear()

    def _stored_offsets(self) -> dict[tuple[str, int], int]:
        with self.db.read() as session:
            rows = session.execute(select(ConsumerOffset)).scalars()
            return {(row.topic, row.partition): row.next_offset for row in rows}

    def _topology_changed(self) -> bool:
        self._connected_at = self.clock()
        consumer = self._consumer
        current = {
            TopicPartition(name, number)
            for name in self.topics.values()
            for number in consumer.partitions_for_topic(name) or ()
        }
        return current != set(self._partitions)

    def _disconnect(self) -> None:
        self._merger.clear()
        for client in (self._consumer, self._producer):
            if client is not None:
                with suppress(KafkaError, OSError):
                    client.close()
        self._consumer = self._producer = None

    def _down(self, exc: BaseException) -> None:
        if self._reachable is not False:
            log.warning(
                "Kafka unreachable (%s); pages serve the database meanwhile", type(exc).__name__
            )
        self._reachable = False
        self.metrics.broker_reachable.set(0)
        self._disconnect()

    # -- one transaction ----------------------------------------------------------------------

    def _commit(self, batch: list[Incoming]) -> None:
        names = {source: name for source, name in self.topics.items()}
        moved: dict[TopicPartition, int] = {}
        for record in batch:
            moved[TopicPartition(names[record.source], record.partition)] = record.offset + 1
        counts: dict[tuple[Source, ReadOutcome], int] = {}
        letters: list[DeadLetter] = []
        with self.db.write() as session:
            for tp, offset in moved.items():
                self._move_offset(session, tp, offset)
            for record in batch:
                applied = apply_record(session, record, self.policy)
                key = (record.source, applied.outcome)
                counts[key] = counts.get(key, 0) + 1
                if applied.dead_letter is not None:
                    letters.append(applied.dead_letter)
            if letters:
                self._dead_letter(letters)
        self._next.update(moved)
        self._stored.update(moved)
        for (source, outcome), n in counts.items():
            self.metrics.events.labels(source.value, outcome.value).inc(n)

    def _move_offset(self, session: Session, tp: TopicPartition, offset: int) -> None:
        expected = self._next[tp]
        if tp not in self._stored:
            found = session.get(ConsumerOffset, (tp.topic, tp.partition))
            if found is not None:
                raise OffsetConflict
            session.execute(
                insert(ConsumerOffset).values(
                    topic=tp.topic, partition=tp.partition, next_offset=offset
                )
            )
            return
        result = session.execute(
            update(ConsumerOffset)
            .where(
                ConsumerOffset.topic == tp.topic,
                ConsumerOffset.partition == tp.partition,
                ConsumerOffset.next_offset == expected,
            )
            .values(next_offset=offset)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise OffsetConflict

    def _dead_letter(self, letters: list[DeadLetter]) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(
                acks="all",
                client_id=f"{self.settings.app_id}-web-dlq",
                **self.settings.kafka_python_config(),
            )
        futures = [
            self._producer.send(
                self.settings.deadletter_topic, value=letter.model_dump_json().encode()
            )
            for letter in letters
        ]
        for future in futures:
            future.get(timeout=10)
        log.warning(
            "%d record(s) of the alerts/acks topics rejected and dead-lettered", len(letters)
        )

    # -- lag and freshness --------------------------------------------------------------------

    def _report(self, ends: dict[TopicPartition, int]) -> int:
        per_topic: dict[Source, int] = {source: 0 for source in self.topics}
        for tp, end in ends.items():
            source, _ = self._partitions[tp]
            per_topic[source] += max(0, end - self._next[tp])
        for source, lag in per_topic.items():
            self.metrics.lag.labels(source.value).set(lag)
        total = sum(per_topic.values())
        now = self.clock()
        if self._reachable is False:
            log.info("Kafka reachable again")
        self._reachable = True
        self.metrics.broker_reachable.set(1)
        if total == 0:
            self.metrics.caught_up.set(now)
        caught_up = total == 0
        if caught_up != self._caught_up or now - self._status_written >= self.status_every_s:
            self._write_status(now, total)
            self._caught_up = caught_up
        return total

    def _write_status(self, now: float, lag: int) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        with self.db.write() as session:
            status = session.get(IngestStatus, STATUS_ROW)
            if status is None:
                status = IngestStatus(name=STATUS_ROW)
                session.add(status)
            status.contacted_at = moment
            status.lag = lag
            if lag == 0:
                status.caught_up_at = moment
        self._status_written = now
