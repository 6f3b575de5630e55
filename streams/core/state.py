"""Per-patient state: enrollment, bounded lab history, clinical events and announced alerts.

History semantics (clinical-rules.md section 0):

- Results are kept per analyte, ordered by collection time (then accession, value), whatever
  order they arrived in, so every rule sees the same history for the same set of results.
- A result is identified by (analyte, accession); without an accession by (analyte, source,
  collection time) -- the same specimen from the same lab. Status ranks
  preliminary < final < corrected decide what replaces what: a lower-ranked record arriving
  after a higher-ranked one for the same result is ``superseded`` (ignored); a cancellation
  leaves a tombstone so that the removal survives re-evaluation and re-delivery.
- Duplicates (same source, accession, analyte, status, collection time and value) are ignored.
- History is bounded by ``Policy.history_window_days`` and ``max_results_per_analyte``, but never
  below the start of an open alert's episode: pruning must not move an episode's start.

``step`` updates a state in place (the Faust agent writes it back to its table); tests and
``replay`` start from ``PatientState.new``.
"""

from bisect import insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from schemas.vocab import (
    Analyte,
    ClinicalEventKind,
    CostimulatoryDomain,
    MrdMethod,
    Outcome,
    ResultStatus,
    RiskFactor,
    RuleName,
    Severity,
)

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
    #: fingerprints of the earlier versions this one replaced (re-deliveries are duplicates)
    replaced: tuple[str, ...] = ()
    #: ``collected_at`` as epoch seconds (derived; day numbers are computed from it)
    collected_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.collected_ts = self.collected_at.timestamp()

    def fingerprint(self) -> str:
        """Identity of one applied version: status, specimen time, value and detection."""
        return f"{self.status.value}|{self.collected_ts:.0f}|{self.value!r}|{self.detected!r}"

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
        return self.status is ResultStatus.CANCELLED


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


class AlertStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    RETRACTED = "retracted"


@dataclass(slots=True)
class AnnouncedAlert:
    """What subscribers were last told about one alert (one episode of one rule)."""

    rule: RuleName
    episode_key: str
    episode_start: datetime
    severity: Severity
    status: AlertStatus
    signature: str
    seq: int


@dataclass(slots=True)
class PatientState:
    patient_id: str
    enrollment: Enrollment | None = None
    results: dict[Analyte, list[StoredResult]] = field(default_factory=dict)
    events: list[ClinicalEventRecord] = field(default_factory=list)
    alerts: dict[str, AnnouncedAlert] = field(default_factory=dict)
    clock: datetime | None = None
    #: per analyte, the first collection time still held after pruning dropped older results
    pruned_before: dict[Analyte, datetime] = field(default_factory=dict)

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
        history = self.results.setdefault(analyte, [])
        index = _find_same_result(history, incoming)
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
            restores_cancelled = stored.is_cancelled and incoming.status is ResultStatus.CORRECTED
            if not restores_cancelled:
                return Outcome.SUPERSEDED, None
        if stored is not None:
            incoming.replaced = (*stored.replaced, stored.fingerprint())
        if index is not None:
            del history[index]
        insort(history, incoming)
        return Outcome.ACCEPTED, stored

    def record_event(self, event: ClinicalEventRecord) -> Outcome:
        if event in self.events:
            return Outcome.DUPLICATE
        insort(self.events, event, key=lambda e: (e.at, e.kind.value))
        return Outcome.ACCEPTED

    def needs_pruning(self, analyte: Analyte, window_days: int, max_per_analyte: int) -> bool:
        history = self.results.get(analyte)
        if not history:
            return False
        span = history[-1].collected_at - history[0].collected_at
        return len(history) > max_per_analyte or span > timedelta(days=window_days)

    def prune(self, window_days: int, max_per_analyte: int) -> None:
        """Bound the history, never cutting into an open alert's episode.

        Where results were dropped, ``pruned_before`` records the cut: episodes before it are
        settled history that re-evaluation can no longer see (``streams.core.lifecycle``).
        """
        open_starts = [
            a.episode_start for a in self.alerts.values() if a.status is AlertStatus.OPEN
        ]
        floor = min(open_starts) if open_starts else None
        for analyte, history in self.results.items():
            if not history:
                continue
            horizon = history[-1].collected_at - timedelta(days=window_days)
            if floor is not None:
                horizon = min(horizon, floor)
            keep_from = 0
            while keep_from < len(history) and history[keep_from].collected_at < horizon:
                keep_from += 1
            excess = len(history) - keep_from - max_per_analyte
            while excess > 0 and (floor is None or history[keep_from].collected_at < floor):
                keep_from += 1
                excess -= 1
            if keep_from:
                del history[:keep_from]
                self.pruned_before[analyte] = history[0].collected_at
        if self.events:
            latest = self.events[-1].at - timedelta(days=window_days)
            self.events[:] = [e for e in self.events if e.at >= latest]


def _find_same_result(history: list[StoredResult], incoming: StoredResult) -> int | None:
    """Index of the stored version of the same result.

    Same result = same accession; without an accession, same source and specimen time -- except
    that two *final* results of one specimen without accessions are two results (each is kept;
    an exact repeat is still a duplicate).
    """
    accession = incoming.accession
    if accession is not None:
        for index in range(len(history) - 1, -1, -1):
            if history[index].accession == accession:
                return index
        return None
    for index in range(len(history) - 1, -1, -1):
        stored = history[index]
        if (
            stored.accession is None
            and stored.collected_at == incoming.collected_at
            and stored.source == incoming.source
            and not (
                incoming.status is ResultStatus.FINAL
                and stored.status is ResultStatus.FINAL
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
