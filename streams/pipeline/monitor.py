"""The monitor: a batch of Kafka records in, alert events, dead letters and states out.

No clinical logic and no framework: the Faust agent (``streams.shell.agents``) and the
benchmarks' plain aiokafka loop run this same code.

Per batch (``Monitor.process``):

1. Decode every record (``decode_record``), normalise lab results; what cannot be read goes to
   ``carwatch.deadletter`` as a ``DeadLetter`` (raw text, reasons, source topic; keyed by the
   patient id when known). A record that maps to none of our analytes is counted ``unmapped``.
2. Group by patient. A patient with no table entry and no ``infusion`` in the batch is not
   enrolled: the records are counted ``not_enrolled`` and nothing else happens -- no state is
   decoded, built or written (a hospital feed is ~90 % such records).
3. For every other patient: take the decoded state (``PatientStates``: decoded once while the
   partition is owned, not per batch), ``apply_all`` the patient's records in order (so results of
   one specimen are applied together), encode and write the state once. Order: a patient's records from one topic keep their log order; records from the two
   input topics are merged by Kafka timestamp (ties: clinical first), which restores the order
   the sources sent them in whenever both are in the batch. Across batches Kafka gives no order
   between two topics; sources send a patient's ``infusion`` before the labs it enrols
   (docs/architecture.md "Kafka and Faust facts"), and the demo feed and the tests do.
4. Every alert event is sent to ``carwatch.alerts`` keyed by patient id, with ``decided_at`` set
   to this worker's wall clock.

A record that makes the engine raise (a bug, never expected) is dead-lettered and the patient's
batch is re-run from the stored state without it, so one poison record neither stops the
partition nor leaves a half-applied state.

Table writes bind Faust's "current event" to a record of the same partition: a batch spans
partitions, and both the changelog partition and rocksdict's per-partition store come from it.

Metrics: ``streams.metrics.PipelineMetrics`` on this module's registry, served by
prometheus-client on ``CARWATCH_METRICS_HOST:PORT``. No patient id in any label or log line.
"""

import heapq
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.alert import AlertEvent
from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import Rejection, decode_record
from schemas.vocab import Outcome, RejectReason, RuleName, Severity
from streams.core.engine import PatientEvent, StepResult, apply_all, tick
from streams.core.policy import Policy
from streams.core.state import PatientState
from streams.ingest.normalise import Unmapped, normalise_lab_result
from streams.metrics import CLINICAL, UNKNOWN_ANALYTE, PipelineMetrics
from streams.pipeline.state_codec import StateFormatError
from streams.pipeline.store import OpenAlerts, PatientStates, open_alerts

log = logging.getLogger(__name__)

#: Metric label values of the input and output topics (whatever the configured topic names).
LABS = "carwatch.labs"
CLINICAL_TOPIC = "carwatch.clinical"
ALERTS = "carwatch.alerts"
DEADLETTER = "carwatch.deadletter"


@dataclass(slots=True)
class InRecord:
    """One Kafka record as the monitor sees it."""

    key: bytes | None
    value: Any
    #: Metric label of the input topic (``LABS`` / ``CLINICAL_TOPIC``), None when unknown.
    topic: str | None
    partition: int
    offset: int
    #: Kafka record timestamp in seconds: when the record was received.
    received_at: float | None
    #: The Faust event the record came in (binds table writes to its partition).
    origin: Any = None


@dataclass(slots=True)
class Outgoing:
    """What one batch produces. ``alerts``/``deadletters`` as (key, value bytes) to send.

    ``states`` are the patients' new states (key, partition, state, origin). Callers send the
    alerts and dead letters, wait until the broker has acknowledged them, and only then
    ``persist`` the states: a state that says an alert was announced must never reach the store
    (RocksDB writes at once) or the changelog ahead of the alert itself, else a crash in between
    loses the alert for good (the re-processed record is then a duplicate). Interrupted before
    the write, a restart re-processes the records (offsets are committed after both) and
    re-sends the events, which subscribers drop by ``event_id``: at least once, never lost. A
    caller that cannot persist (the send failed) must ``PatientStates.forget`` the cached states
    the batch updated.
    """

    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deadletters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    states: list[tuple[bytes, int, PatientState, Any]] = field(default_factory=list)
    alert_events: list[AlertEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    records: int = 0

    def persist(self, states: PatientStates) -> None:
        for key, partition, state, origin in self.states:
            states.put(key, partition, state, origin)


@dataclass(slots=True)
class _Decoded:
    record: InRecord
    event: PatientEvent
    topic: str
    collected_at: datetime


class AlertIndex:
    """Which patients this process holds, on which partition, with which alerts open.

    Feeds the ``patients_monitored`` and ``active_alerts`` gauges: counts are kept per partition
    so that a revoked partition's patients and alerts leave the gauges with it, and a recovered
    one's (from the changelog) come back.
    """

    def __init__(self) -> None:
        self.entries: dict[bytes, tuple[int, OpenAlerts]] = {}
        self.by_partition: defaultdict[int, set[bytes]] = defaultdict(set)
        self.open_by_partition: defaultdict[int, Counter[tuple[RuleName, Severity]]] = defaultdict(
            Counter
        )

    def update(self, key: bytes, partition: int, open_alerts: OpenAlerts | None) -> None:
        """Record ``key``'s current open alerts; ``None`` removes it."""
        previous = self.entries.pop(key, None)
        if previous is not None:
            old_partition, old_open = previous
            self.by_partition[old_partition].discard(key)
            self.open_by_partition[old_partition].subtract(old_open)
        if open_alerts is None:
            return
        self.entries[key] = (partition, open_alerts)
        self.by_partition[partition].add(key)
        self.open_by_partition[partition].update(open_alerts)

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            for key in self.by_partition.pop(partition, set()):
                self.entries.pop(key, None)
            self.open_by_partition.pop(partition, None)

    def keys(self, partitions: set[int] | None) -> Iterator[tuple[bytes, int]]:
        for partition, keys in list(self.by_partition.items()):
            if partitions is None or partition in partitions:
                for key in list(keys):
                    yield key, partition

    def patients(self, partitions: set[int] | None) -> int:
        return sum(
            len(keys)
            for partition, keys in self.by_partition.items()
            if partitions is None or partition in partitions
        )

    def open_alerts(self, partitions: set[int] | None) -> Counter[tuple[RuleName, Severity]]:
        total: Counter[tuple[RuleName, Severity]] = Counter()
        for partition, counts in self.open_by_partition.items():
            if partitions is None or partition in partitions:
                total.update(counts)
        return total


class Monitor:
    """Framework-free batch processing (module docstring); the Faust agent is a shell around it."""

    def __init__(
        self,
        policy: Policy,
        metrics: PipelineMetrics,
        index: AlertIndex | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        self.index = index if index is not None else AlertIndex()
        self.wall_clock = wall_clock
        self._published_open: set[tuple[RuleName, Severity]] = set()

    # -- batches ------------------------------------------------------------------------------

    def process(self, records: Sequence[InRecord], states: PatientStates) -> Outgoing:
        started = time.perf_counter()
        out = Outgoing(records=len(records))
        counts: Counter[tuple[str, str]] = Counter()  # (analyte label, outcome)
        consumed: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        deadlettered: Counter[str] = Counter()
        groups: dict[str, list[_Decoded]] = {}
        saw_lab = False
        for record in records:
            decoded = self._decode(record)
            topic = record.topic or _topic_of(decoded)
            consumed[topic] += 1
            if topic == LABS:
                saw_lab = True
            if isinstance(decoded, _Rejected):
                counts[(decoded.analyte, Outcome.REJECTED.value)] += 1
                out.outcomes[Outcome.REJECTED] += 1
                for detail in decoded.rejection.details[:1]:
                    rejected[detail.reason.value] += 1
                deadlettered[topic] += 1
                self._dead_letter(out, record, topic, decoded.rejection)
            elif isinstance(decoded, Unmapped):
                counts[(UNKNOWN_ANALYTE, Outcome.UNMAPPED.value)] += 1
                out.outcomes[Outcome.UNMAPPED] += 1
            else:
                groups.setdefault(decoded.patient_id, []).append(
                    _Decoded(record, decoded, topic, _collected_at(decoded))
                )
        for patient_id, group in groups.items():
            self._patient(patient_id, group, states, out, counts, rejected, deadlettered)
        self._flush_counts(counts, consumed, rejected, deadlettered)
        if saw_lab:
            self.metrics.last_result_timestamp.set(self.wall_clock())
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return out

    def _decode(self, record: InRecord) -> "PatientEvent | Unmapped | _Rejected":
        value = record.value
        if value is None:
            rejection = Rejection.of(RejectReason.MALFORMED_JSON, "empty message (no value)")
            return _Rejected(rejection, UNKNOWN_ANALYTE)
        decoded = decode_record(value)
        if isinstance(decoded, Rejection):
            return _Rejected(decoded, UNKNOWN_ANALYTE)
        if isinstance(decoded, LabResult):
            normalised = normalise_lab_result(decoded, self.policy)
            if isinstance(normalised, Rejection):
                analyte = decoded.analyte.value if decoded.analyte else UNKNOWN_ANALYTE
                return _Rejected(normalised, analyte)
            return normalised
        return decoded

    def _patient(
        self,
        patient_id: str,
        group: list[_Decoded],
        states: PatientStates,
        out: Outgoing,
        counts: Counter[tuple[str, str]],
        rejected: Counter[str],
        deadlettered: Counter[str],
    ) -> None:
        key = patient_id.encode()
        origin = group[0].record.origin
        partition = group[0].record.partition
        try:
            state = states.get(key, partition, origin)
        except StateFormatError as exc:
            self._unreadable(group, exc, out, counts, rejected, deadlettered)
            return
        if state is None and not any(isinstance(d.event, Infusion) for d in group):
            for item in group:
                counts[(_analyte_label(item.event), Outcome.NOT_ENROLLED.value)] += 1
            out.outcomes[Outcome.NOT_ENROLLED] += len(group)
            return
        before = open_alerts(state) if state is not None else ()
        ordered = _merge(group)
        state, results, poisoned = self._apply(
            state or PatientState.new(patient_id), ordered, states, key, partition
        )
        rejection = Rejection.of(
            RejectReason.PROCESSING_ERROR,
            "the record could not be processed (internal error; see the worker log)",
            patient_id=patient_id,
        )
        self._reject_all(poisoned, rejection, out, counts, rejected, deadlettered)
        for item, result in results:
            counts[(_analyte_label(item.event), result.outcome.value)] += 1
            out.outcomes[result.outcome] += 1
            if result.alerts:
                self._announce(item, result.alerts, key, out)
        if state.enrollment is not None:
            out.states.append((key, partition, state, origin))
            after = open_alerts(state)
            if after != before or key not in self.index.entries:
                self.index.update(key, partition, after)

    def _unreadable(
        self,
        group: list[_Decoded],
        error: StateFormatError,
        out: Outgoing,
        counts: Counter[tuple[str, str]],
        rejected: Counter[str],
        deadlettered: Counter[str],
    ) -> None:
        """A stored state this release cannot read is never replaced by a fresh one (that
        would forget the patient's history and re-raise old alerts): the records go to the
        dead-letter topic, to be reprocessed after the rebuild (docs/deploy.md "Upgrading")."""
        log.error("a patient's stored state is unreadable (%s); records dead-lettered", error)
        rejection = Rejection.of(
            RejectReason.STATE_UNREADABLE,
            f"the patient's stored state cannot be read by this release ({error})",
            patient_id=group[0].event.patient_id,
        )
        self._reject_all(group, rejection, out, counts, rejected, deadlettered)

    def _reject_all(
        self,
        items: list[_Decoded],
        rejection: Rejection,
        out: Outgoing,
        counts: Counter[tuple[str, str]],
        rejected: Counter[str],
        deadlettered: Counter[str],
    ) -> None:
        for item in items:
            rejected[rejection.reason.value] += 1
            counts[(_analyte_label(item.event), Outcome.REJECTED.value)] += 1
            out.outcomes[Outcome.REJECTED] += 1
            deadlettered[item.topic] += 1
            self._dead_letter(out, item.record, item.topic, rejection)

    def _apply(
        self,
        state: PatientState,
        ordered: list[_Decoded],
        states: PatientStates,
        key: bytes,
        partition: int,
    ) -> tuple[PatientState, list[tuple[_Decoded, StepResult]], list[_Decoded]]:
        """``apply_all`` the records; on an engine error, find and drop the poison records.

        Each retry starts from the stored state: a failed ``apply_all`` may have changed the
        cached one half-way.
        """
        poisoned: list[_Decoded] = []
        items = ordered
        while True:
            try:
                applied = apply_all(state, [item.event for item in items], self.policy)
                return state, list(zip(items, applied, strict=True)), poisoned
            except Exception as exc:  # a bug in the engine: keep the partition going
                log.exception(
                    "the engine raised %s on a patient's batch; isolating the record",
                    type(exc).__name__,
                )
            origin = ordered[0].record.origin
            culprit = self._culprit(items, states, key, partition, origin)
            poisoned.append(culprit)
            items = [item for item in items if item is not culprit]
            state = states.reload(key, partition, origin) or PatientState.new(state.patient_id)

    def _culprit(
        self,
        items: list[_Decoded],
        states: PatientStates,
        key: bytes,
        partition: int,
        origin: Any,
    ) -> _Decoded:
        """The first record that makes the engine raise when applied one by one (else the
        last: the failure needed the records together)."""
        state = states.reload(key, partition, origin) or PatientState.new(key.decode())
        for item in items:
            try:
                apply_all(state, [item.event], self.policy)
            except Exception:
                return item
        return items[-1]

    def _announce(
        self, item: _Decoded, alerts: list[AlertEvent], key: bytes, out: Outgoing
    ) -> None:
        decided = self.wall_clock()
        decided_at = datetime.fromtimestamp(decided, UTC)
        collected = item.collected_at.timestamp()
        for alert in alerts:
            event = alert.model_copy(update={"decided_at": decided_at})
            out.alert_events.append(event)
            out.alerts.append((key, event.model_dump_json().encode()))
            rule = event.rule.value
            self.metrics.alert_events.labels(rule, event.severity.value, event.action.value).inc()
            self.metrics.collected_to_alert.labels(rule).observe(max(0.0, decided - collected))
            if item.record.received_at is not None:
                self.metrics.received_to_alert.labels(rule).observe(
                    max(0.0, decided - item.record.received_at)
                )

    def _dead_letter(
        self, out: Outgoing, record: InRecord, topic: str, rejection: Rejection
    ) -> None:
        value = record.value
        if isinstance(value, bytes | bytearray):
            raw = bytes(value).decode("utf-8", "replace")
        else:
            raw = "" if value is None else str(value)
        received = (
            datetime.fromtimestamp(record.received_at, UTC)
            if record.received_at is not None
            else None
        )
        letter = DeadLetter(
            reason=rejection.reason,
            details=rejection.details,
            raw=raw,
            source=topic,
            location=f"{topic}[{record.partition}]@{record.offset}",
            received_at=received,
        )
        out.dead_letters.append(letter)
        key = rejection.patient_id.encode() if rejection.patient_id else None
        out.deadletters.append((key, letter.model_dump_json().encode()))

    def _flush_counts(
        self,
        counts: Counter[tuple[str, str]],
        consumed: Counter[str],
        rejected: Counter[str],
        deadlettered: Counter[str],
    ) -> None:
        m = self.metrics
        for (analyte, outcome), n in counts.items():
            m.results.labels(analyte, outcome).inc(n)
        for topic, n in consumed.items():
            m.consumed.labels(topic).inc(n)
        for reason, n in rejected.items():
            m.rejected.labels(reason).inc(n)
        for topic, n in deadlettered.items():
            m.deadletters.labels(topic).inc(n)

    # -- wall clock ---------------------------------------------------------------------------

    def tick(
        self, now: datetime, entries: Iterable[tuple[bytes, int, Any]], states: PatientStates
    ) -> Outgoing:
        """``tick(state, now)`` for each (key, partition, origin); returns what changed.

        A tick that raises nothing leaves the state as stored (its clock included), as when
        states were decoded afresh for every tick: only states with news are written.
        """
        out = Outgoing()
        decided_at = now
        for key, partition, origin in entries:
            try:
                state = states.get(key, partition, origin)
            except StateFormatError:  # counted and reported when its records arrive
                state = None
            if state is None:
                self.index.update(key, partition, None)
                continue
            clock = state.clock
            _, alerts = tick(state, now, self.policy)
            if not alerts:
                state.clock = clock
                continue
            out.states.append((key, partition, state, origin))
            self.index.update(key, partition, open_alerts(state))
            for alert in alerts:
                event = alert.model_copy(update={"decided_at": decided_at})
                out.alert_events.append(event)
                out.alerts.append((key, event.model_dump_json().encode()))
                self.metrics.alert_events.labels(
                    event.rule.value, event.severity.value, event.action.value
                ).inc()
        return out

    # -- gauges -------------------------------------------------------------------------------

    def publish_gauges(self, partitions: set[int] | None) -> None:
        """Set ``patients_monitored`` and ``active_alerts`` from the index (owned partitions)."""
        self.metrics.patients_monitored.set(self.index.patients(partitions))
        current = {k: n for k, n in self.index.open_alerts(partitions).items() if n > 0}
        for rule, severity in self._published_open - current.keys():
            self.metrics.active_alerts.labels(rule.value, severity.value).set(0)
        for (rule, severity), n in current.items():
            self.metrics.active_alerts.labels(rule.value, severity.value).set(n)
        self._published_open = set(current)


@dataclass(frozen=True, slots=True)
class _Rejected:
    rejection: Rejection
    analyte: str


def _merge(group: list[_Decoded]) -> list[_Decoded]:
    if len(group) == 1:
        return group
    clinical = [d for d in group if d.topic != LABS]
    labs = [d for d in group if d.topic == LABS]
    if not clinical or not labs:
        return group
    # heapq.merge keeps each input's order and prefers the first input on ties.
    return list(heapq.merge(clinical, labs, key=lambda d: d.record.received_at or 0.0))


def _topic_of(decoded: object) -> str:
    if isinstance(decoded, Infusion | ClinicalEvent):
        return CLINICAL_TOPIC
    return LABS


def _collected_at(event: PatientEvent) -> datetime:
    if isinstance(event, LabResult):
        return event.collected_at
    if isinstance(event, Infusion):
        return event.infused_at
    return event.at


def _analyte_label(event: PatientEvent) -> str:
    if isinstance(event, LabResult):
        return event.analyte.value if event.analyte else UNKNOWN_ANALYTE
    return CLINICAL
