"""Per-patient state: enrollment, bounded lab history, clinical events and announced alerts.

History semantics (docs/clinical-spec.md "Common definitions"):

- Results are kept per analyte, ordered by collection time (then accession, value), whatever
  order they arrived in, so every rule sees the same history for the same set of results.
- A result is identified by (analyte, accession); without an accession by (analyte, source,
  collection time) -- the same specimen from the same lab. Status ranks
  preliminary < final < corrected decide what replaces what: a lower-ranked record arriving
  after a higher-ranked one for the same result is ``superseded`` (ignored); a cancellation
  leaves a tombstone so that the removal survives re-evaluation and re-delivery.
- Duplicates (same source, accession, analyte, status, collection time and value) are ignored.
- History is bounded (``Policy.history_window_days``, ``max_results_per_analyte``). Pruning moves
  one patient-wide ``cut``: what each rule still needs from the results before it -- BCA
  established, an open episode's start and peak, ICAHT day counts, the ferritin baseline -- is
  folded into that rule's ``carries`` entry first (``streams.core.engine.prune``), so pruning
  never decides anything. Results collected before the cut are settled history
  (outcome ``outside_window``).

``step`` updates a state in place (the Faust agent writes it back to its table); tests and
``replay`` start from ``PatientState.new``.
"""

from bisect import insort
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schemas.vocab import (
    Analyte,
    ClinicalEventKind,
    Comparator,
    CostimulatoryDomain,
    MrdMethod,
    Outcome,
    ResultStatus,
    RiskFactor,
    RuleName,
    Severity,
)

#: enum members as module constants: a class attribute lookup costs on the hot path
_CANCELLED, _CORRECTED, _FINAL = ResultStatus.CANCELLED, ResultStatus.CORRECTED, ResultStatus.FINAL
_RANK = {
    ResultStatus.PRELIMINARY: 0,
    ResultStatus.FINAL: 1,
    ResultStatus.CORRECTED: 2,
    ResultStatus.CANCELLED: 3,
}


@dataclass(slots=True)
class StoredResult:
    """One lab result as it stands now (canonical unit of its analyte)."""

    collected_at: datetime
    value: float | None
    status: ResultStatus
    accession: str | None = None
    source: str | None = None
    resulted_at: datetime | None = None
    detected: bool | None = None
    method: MrdMethod | None = None
    sensitivity: float | None = None
    #: censored result: ``value`` is the assay's limit
    comparator: Comparator | None = None
    #: fingerprints of the earlier versions this one replaced (re-deliveries are duplicates)
    replaced: tuple[str, ...] = ()
    #: ``collected_at`` as epoch seconds (derived; day numbers are computed from it)
    collected_ts: float = field(init=False, repr=False, compare=False)
    #: the compact row of ``streams.core.carry.result_row`` (derived, made once: a stored result
    #: does not change, and a state is encoded after every batch that touches its patient)
    row: list[Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.collected_ts = self.collected_at.timestamp()

    def fingerprint(self) -> str:
        """Identity of one applied version: status, specimen time, value and detection."""
        comparator = "" if self.comparator is None else self.comparator.value
        return (
            f"{self.status.value}|{self.collected_ts:.0f}|{comparator}{self.value!r}|"
            f"{self.detected!r}"
        )

    def sort_key(self) -> tuple[datetime, str, float]:
        return (
            self.collected_at,
            self.accession or "",
            -1.0 if self.value is None else self.value,
        )

    def __lt__(self, other: "StoredResult") -> bool:
        return self.sort_key() < other.sort_key()

    @property
    def is_cancelled(self) -> bool:
        return self.status is _CANCELLED


@dataclass(slots=True)
class Enrollment:
    """Fields of the latest ``infusion`` record (a later one replaces them)."""

    infused_at: datetime
    product: str | None = None
    costimulatory_domain: CostimulatoryDomain | None = None
    prior_hct: bool = False
    hct_eligible: bool | None = None
    risk_factors: tuple[RiskFactor, ...] = ()


@dataclass(frozen=True, slots=True)
class ClinicalEventRecord:
    kind: ClinicalEventKind
    at: datetime
    detail: str | None = None


class AlertStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    RETRACTED = "retracted"


@dataclass(slots=True)
class AnnouncedAlert:
    """What subscribers were last told about one alert (one episode of one rule).

    ``alert_id`` is fixed when the alert is first raised and carried by all its later events,
    whatever the policy then says (docs/architecture.md "Alert ids").
    """

    rule: RuleName
    episode_key: str
    episode_start: datetime
    severity: Severity
    status: AlertStatus
    signature: str
    seq: int
    alert_id: str


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A monitoring gap seen by ``tick``: the missing analyte kind, since when, overdue when.

    Ticks are wall-clock observations, not history: the record keeps that a gap was seen, so that
    one gap is one episode however many ticks see it. Whether it is still open is read from the
    history (a result of that kind collected after ``anchor`` resolves it).
    """

    kind: str
    anchor: datetime
    overdue_at: datetime
    #: the limit the gap exceeded (days), as judged when it was seen
    limit_days: int
    #: the last result before the gap (None when the gap counts from day 0)
    last: StoredResult | None = None
    last_analyte: Analyte | None = None


@dataclass(slots=True)
class PatientState:
    patient_id: str
    enrollment: Enrollment | None = None
    results: dict[Analyte, list[StoredResult]] = field(default_factory=dict)
    events: list[ClinicalEventRecord] = field(default_factory=list)
    alerts: dict[str, AnnouncedAlert] = field(default_factory=dict)
    clock: datetime | None = None
    #: results and events before this instant were pruned; their effect lives in ``carries``
    cut: datetime | None = None
    #: per rule, its accumulator at ``cut`` (JSON-able, ``streams.core.carry``)
    carries: dict[RuleName, Any] = field(default_factory=dict)
    gaps: list[GapRecord] = field(default_factory=list)
    #: per scan rule, its live accumulator after its last item: lets a step that only appends
    #: feed the new items instead of the history. Derived, never stored: a decoded state
    #: rebuilds it on its first evaluation.
    tails: dict[RuleName, Any] = field(default_factory=dict, compare=False, repr=False)
    #: the earliest collection time in ``results`` (derived: pruning checks it each step)
    oldest: datetime | None = field(default=None, compare=False, repr=False)
    #: per analyte, accession → stored result (derived, rebuilt on demand)
    accessions: dict[Analyte, dict[str, StoredResult]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: what the store's codec keeps between writes of this state (its own business; never
    #: stored, never compared)
    codec_memo: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def new(cls, patient_id: str) -> "PatientState":
        return cls(patient_id=patient_id)

    def record_result(
        self, analyte: Analyte, incoming: StoredResult
    ) -> tuple[Outcome, StoredResult | None]:
        """Apply one result to the history.

        Returns the outcome (``accepted`` when the history changed) and the stored version it
        replaced, if any.
        """
        if self.cut is not None and incoming.collected_at < self.cut:
            return Outcome.OUTSIDE_WINDOW, None
        history = self.results.setdefault(analyte, [])
        by_accession = self.accessions.get(analyte)
        if by_accession is None:
            by_accession = self.accessions[analyte] = {
                r.accession: r for r in history if r.accession is not None
            }
        index = _find_same_result(history, incoming, by_accession)
        stored = None if index is None else history[index]
        if stored is not None and (
            _same_record(stored, incoming) or incoming.fingerprint() in stored.replaced
        ):
            return Outcome.DUPLICATE, None
        if incoming.is_cancelled:
            if stored is None:
                return Outcome.UNKNOWN_ACCESSION, None
            if stored.is_cancelled:
                return Outcome.DUPLICATE, None
            incoming = _tombstone(incoming)
        elif stored is not None and _RANK[incoming.status] < _RANK[stored.status]:
            restores_cancelled = stored.is_cancelled and incoming.status is _CORRECTED
            if not restores_cancelled:
                return Outcome.SUPERSEDED, None
        if stored is not None:
            incoming.replaced = (*stored.replaced, stored.fingerprint())
        if index is not None:
            del history[index]
        if self.oldest is not None and incoming.collected_at < self.oldest:
            self.oldest = incoming.collected_at
        if not history or history[-1] < incoming:
            history.append(incoming)  # the usual case: results arrive in collection order
        else:
            insort(history, incoming)
        if incoming.accession is not None:
            by_accession[incoming.accession] = incoming
        return Outcome.ACCEPTED, stored

    def earliest(self) -> datetime | None:
        """The earliest collection time held (cached in ``oldest``)."""
        if self.oldest is None:
            self.oldest = min((h[0].collected_at for h in self.results.values() if h), default=None)
        return self.oldest

    def record_event(self, event: ClinicalEventRecord) -> Outcome:
        if self.cut is not None and event.at < self.cut:
            return Outcome.OUTSIDE_WINDOW
        if event in self.events:
            return Outcome.DUPLICATE
        insort(self.events, event, key=lambda e: (e.at, e.kind.value, e.detail or ""))
        return Outcome.ACCEPTED

    def ended_at(self) -> datetime | None:
        """When follow-up ended (``end_of_follow_up``), else None."""
        for event in self.events:
            if event.kind is ClinicalEventKind.END_OF_FOLLOW_UP:
                return event.at
        return None


def _find_same_result(
    history: list[StoredResult],
    incoming: StoredResult,
    by_accession: dict[str, StoredResult],
) -> int | None:
    """Index of the stored version of the same result.

    Same result = same accession; without an accession, same source and specimen time -- except
    that two *final* results of one specimen without accessions are two results (each is kept;
    an exact repeat is still a duplicate).
    """
    accession = incoming.accession
    if accession is not None:
        stored = by_accession.get(accession)
        if stored is None:
            return None
        return next(i for i in range(len(history) - 1, -1, -1) if history[i] is stored)
    for index in range(len(history) - 1, -1, -1):
        stored = history[index]
        if (
            stored.accession is None
            and stored.collected_at == incoming.collected_at
            and stored.source == incoming.source
            and not (
                incoming.status is _FINAL
                and stored.status is _FINAL
                and not _same_record(stored, incoming)
            )
        ):
            return index
    return None


def _same_record(stored: StoredResult, incoming: StoredResult) -> bool:
    return (
        stored.status is incoming.status
        and stored.collected_at == incoming.collected_at
        and stored.value == incoming.value
        and stored.comparator is incoming.comparator
        and stored.detected == incoming.detected
        and stored.accession == incoming.accession
        and stored.source == incoming.source
    )


def _tombstone(cancel: StoredResult) -> StoredResult:
    return StoredResult(
        collected_at=cancel.collected_at,
        value=None,
        status=ResultStatus.CANCELLED,
        accession=cancel.accession,
        source=cancel.source,
        resulted_at=cancel.resulted_at,
    )
