"""What a rule is: a pure function of a patient's history to the episodes it recognises.

A rule never emits events itself. It returns every episode in which its alert condition held at
some time on the history as now known -- open ones and closed ones -- and
``streams.lifecycle.reconcile`` compares them with what subscribers were already told:
new episode → ``raised``, escalation → ``updated``, closed → ``resolved``, gone from the history
(the condition never held) → ``retracted``. Re-evaluating the whole history is what makes late,
corrected and cancelled results come out right, and makes the result independent of arrival order.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from schemas.alert import Evidence
from schemas.base import utc_isoformat
from schemas.vocab import CANONICAL_UNIT, Analyte, ResultStatus, RuleName, Severity
from streams.policy import Policy
from streams.state import ClinicalEventRecord, PatientState, StoredResult

REVIEW = (
    "Westhafen 2025: Deimundo Roura et al., Opportunities and Challenges with CAR T-cell "
    "Treatment of Children and Young Adults with B-ALL, Transplant Cell Ther 2025, "
    "doi:10.1016/j.jtct.2025.10.023"
)


@dataclass(frozen=True, slots=True)
class Cite:
    """One result an alert rests on; turned into an ``Evidence`` only when an event is emitted."""

    analyte: Analyte
    result: StoredResult
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Texts:
    summary: str
    recommendation: str
    threshold: str


@dataclass(frozen=True, slots=True)
class Finding:
    """One episode of one rule, as the current history shows it.

    ``raised_at``/``changed_at``/``resolved_at`` are collection times: when the alert condition
    first held, when it last escalated or gained evidence, and when it stopped holding (None while
    it holds). ``signature`` changes exactly when subscribers should get an ``updated`` event.
    ``texts`` is called only when an event is emitted (it formats numbers into sentences).
    """

    rule: RuleName
    episode_key: str
    episode_start: datetime
    severity: Severity
    raised_at: datetime
    changed_at: datetime
    resolved_at: datetime | None
    signature: str
    texts: Callable[[], Texts]
    evidence: tuple[Cite, ...]
    references: tuple[str, ...]
    context: tuple[Cite, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


def episode_key(start: datetime, prefix: str = "") -> str:
    return f"{prefix}{utc_isoformat(start)}"


@dataclass
class RuleInput:
    """Read-only view of one patient for the rules, with per-evaluation caches.

    ``results(analyte)`` yields only results the rules may build on: final and corrected (and
    preliminary when ``Policy.alert_on_preliminary``), never cancellation tombstones.
    """

    state: PatientState
    policy: Policy
    clock: datetime | None = None
    _results: dict[Analyte, list[StoredResult]] = field(default_factory=dict)
    _findings: dict[RuleName, list[Finding]] = field(default_factory=dict)
    findings_of: Callable[[RuleName], list[Finding]] | None = None

    @property
    def day0(self) -> datetime:
        assert self.state.enrollment is not None, "rules run only for enrolled patients"
        return self.state.enrollment.infused_at

    def day(self, moment: datetime) -> int:
        """Calendar day number in the policy time zone; the infusion date is day 0."""
        tz = self.policy.tz
        return (moment.astimezone(tz).date() - self.day0.astimezone(tz).date()).days

    def results(self, analyte: Analyte) -> list[StoredResult]:
        cached = self._results.get(analyte)
        if cached is None:
            allowed = (
                (ResultStatus.FINAL, ResultStatus.CORRECTED, ResultStatus.PRELIMINARY)
                if self.policy.alert_on_preliminary
                else (ResultStatus.FINAL, ResultStatus.CORRECTED)
            )
            cached = [r for r in self.state.results.get(analyte, ()) if r.status in allowed]
            self._results[analyte] = cached
        return cached

    def events(self) -> list[ClinicalEventRecord]:
        return self.state.events

    def findings(self, rule: RuleName) -> list[Finding]:
        """Findings of another rule (for rules that build on them, e.g. hct_consolidation)."""
        assert self.findings_of is not None
        return self.findings_of(rule)

    def evidence(self, cite: Cite) -> Evidence:
        r = cite.result
        return Evidence.model_construct(
            analyte=cite.analyte,
            value=r.value,
            unit=CANONICAL_UNIT[cite.analyte],
            collected_at=r.collected_at,
            accession=r.accession,
            status=r.status,
            day=self.day(r.collected_at),
            detected=r.detected,
            method=r.method,
            sensitivity=r.sensitivity,
            note=cite.note,
        )


class Rule(Protocol):
    """One module per rule under ``streams/rules``; registered in ``streams.engine.RULES``."""

    @property
    def name(self) -> RuleName: ...

    @property
    def analytes(self) -> frozenset[Analyte]:
        """Analytes whose results can change this rule's findings."""
        ...

    @property
    def events(self) -> frozenset[str]:
        """Clinical event kinds that can change this rule's findings."""
        ...

    @property
    def depends_on(self) -> frozenset[RuleName]:
        """Other rules whose findings this rule reads."""
        ...

    def evaluate(self, ctx: RuleInput) -> list[Finding]: ...
