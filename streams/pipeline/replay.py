"""Offline replay: run the engine over input files exactly as the worker would over the topics.

Records are applied in the order given (files in argument order, records in file order). Each
record ends in one outcome (accepted, rejected, unmapped, not_enrolled, duplicate, superseded,
unknown_accession); rejected ones are reported with their location and reason. ``decided_at`` of
each alert is the triggering record's ``resulted_at`` (else its collection time), or ``now`` for the
final ``tick``, so a replay of the same input is byte-identical every time.
"""

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas.alert import AlertEvent
from schemas.records import Rejection
from schemas.vocab import Outcome, RejectReason
from streams.core.engine import PatientEvent, apply_all, tick
from streams.core.policy import Policy
from streams.core.state import PatientState
from streams.ingest.files import InputItem
from streams.ingest.normalise import Unmapped


@dataclass
class ReplayCounts:
    read: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    rejected: Counter[RejectReason] = field(default_factory=Counter)
    alert_events: int = 0

    def summary(self) -> str:
        reasons = ", ".join(f"{r.value}={n}" for r, n in sorted(self.rejected.items()))
        o = self.outcomes
        return (
            f"records read {self.read}, accepted {o[Outcome.ACCEPTED]}, "
            f"rejected {o[Outcome.REJECTED]}" + (f" ({reasons})" if reasons else "") + ", "
            f"unmapped {o[Outcome.UNMAPPED]}, not enrolled {o[Outcome.NOT_ENROLLED]}, "
            f"duplicates {o[Outcome.DUPLICATE]}, superseded {o[Outcome.SUPERSEDED]}, "
            f"unknown accession {o[Outcome.UNKNOWN_ACCESSION]}, "
            f"not monitored {o[Outcome.NOT_MONITORED]}, outside window {o[Outcome.OUTSIDE_WINDOW]}, "
            f"alert events {self.alert_events}"
        )


@dataclass
class Replay:
    """Holds every patient's state; feed it items, then ``finish(now)``."""

    policy: Policy
    on_alert: Callable[[AlertEvent], None]
    on_reject: Callable[[InputItem, Rejection], None]
    #: called for records that were valid but changed nothing worth a note (unknown accession)
    on_ignored: Callable[[InputItem, Outcome], None] = lambda item, outcome: None
    states: dict[str, PatientState] = field(default_factory=dict)
    counts: ReplayCounts = field(default_factory=ReplayCounts)

    def feed(self, items: Iterable[InputItem]) -> None:
        """Apply items in order. Consecutive records of one patient are applied together
        (``apply_all``), so the results of one specimen evaluate once; rejected and unmapped
        lines between them do not separate them."""
        run: list[tuple[InputItem, PatientEvent]] = []
        for item in items:
            self.counts.read += 1
            outcome = item.outcome
            if isinstance(outcome, Rejection):
                self.counts.outcomes[Outcome.REJECTED] += 1
                self.counts.rejected[outcome.reason] += 1
                self.on_reject(item, outcome)
                continue
            if isinstance(outcome, Unmapped):
                self.counts.outcomes[Outcome.UNMAPPED] += 1
                continue
            if run and run[0][1].patient_id != outcome.patient_id:
                self._apply(run)
                run = []
            run.append((item, outcome))
        if run:
            self._apply(run)

    def _apply(self, run: list[tuple[InputItem, PatientEvent]]) -> None:
        patient_id = run[0][1].patient_id
        state = self.states.get(patient_id) or PatientState.new(patient_id)
        results = apply_all(state, [event for _, event in run], self.policy)
        if state.enrollment is not None:  # a feed carries everyone: keep enrolled only
            self.states[patient_id] = state
        for (item, _), result in zip(run, results, strict=True):
            self.counts.outcomes[result.outcome] += 1
            if result.outcome is Outcome.UNKNOWN_ACCESSION:
                self.on_ignored(item, result.outcome)
            self._emit(result.alerts)

    def finish(self, now: datetime | None) -> None:
        if now is None:
            return
        for state in self.states.values():
            self._emit(tick(state, now, self.policy)[1])

    def _emit(self, alerts: list[AlertEvent]) -> None:
        for alert in alerts:
            self.counts.alert_events += 1
            self.on_alert(alert)
