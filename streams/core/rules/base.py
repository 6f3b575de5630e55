"""What a rule is: a pure function of a patient's history to the episodes it recognises.

A rule never emits events itself. It returns every episode in which its alert condition held at
some time on the history as now known -- open ones and closed ones -- and
``streams.core.lifecycle.reconcile`` compares them with what subscribers were already told:
new episode → ``raised``, escalation → ``updated``, closed → ``resolved``, gone from the history
(the condition never held) → ``retracted``. Re-evaluating the whole history is what makes late,
corrected and cancelled results come out right, and makes the result independent of arrival order.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from schemas.alert import Evidence
from schemas.base import utc_isoformat
from schemas.vocab import CANONICAL_UNIT, Analyte, ResultStatus, RuleName, Severity
from streams.core.policy import Policy
from streams.core.state import ClinicalEventRecord, PatientState, StoredResult

T = TypeVar("T")

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

    ``raised_at``/``resolved_at`` are collection times: when the alert condition first held and
    when it stopped holding (None while it holds). ``signature`` changes exactly when subscribers
    should get an ``updated`` event (timed at the result that triggered it).
    ``texts`` is called only when an event is emitted (it formats numbers into sentences).
    """

    rule: RuleName
    episode_key: str
    episode_start: datetime
    severity: Severity
    raised_at: datetime
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
    #: the engine's rule registry, for rules that read other rules' findings
    registry: "Mapping[RuleName, Rule]" = field(default_factory=dict)
    _findings: dict[RuleName, list[Finding]] = field(default_factory=dict)
    _midnight: float | Literal[False] | None = None
    _memo: dict[str, object] = field(default_factory=dict)

    @property
    def day0(self) -> datetime:
        assert self.state.enrollment is not None, "rules run only for enrolled patients"
        return self.state.enrollment.infused_at

    def day(self, moment: datetime) -> int:
        """Calendar day number in the policy time zone; the infusion date is day 0."""
        if self._midnight is None:
            self._midnight = _local_midnight(self.day0, self.policy.timezone)
        if self._midnight is not False:
            return int((moment.timestamp() - self._midnight) // 86400)
        tz = self.policy.tz
        return (moment.astimezone(tz).date() - self.day0.astimezone(tz).date()).days

    def day_of(self, result: StoredResult) -> int:
        """``day(result.collected_at)``, from the result's precomputed epoch seconds."""
        if self._midnight is None:
            self._midnight = _local_midnight(self.day0, self.policy.timezone)
        if self._midnight is not False:
            return int((result.collected_ts - self._midnight) // 86400)
        return self.day(result.collected_at)

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """Compute once per evaluation something two rules read (e.g. neutropenia episodes)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[return-value]

    def results(self, analyte: Analyte) -> list[StoredResult]:
        cached = self._results.get(analyte)
        if cached is None:
            cached = [r for r in self.state.results.get(analyte, ()) if self.usable(r)]
            self._results[analyte] = cached
        return cached

    def usable(self, result: StoredResult) -> bool:
        """May a rule build on this result? Final or corrected (preliminary only by policy)."""
        if result.status is ResultStatus.PRELIMINARY:
            return self.policy.alert_on_preliminary
        return result.status is not ResultStatus.CANCELLED

    def events(self) -> list[ClinicalEventRecord]:
        return self.state.events

    def findings(self, rule: RuleName) -> list[Finding]:
        """A rule's findings on this history, evaluated once per step (dependents read them)."""
        found = self._findings.get(rule)
        if found is None:
            found = self._findings[rule] = self.registry[rule].evaluate(self)
        return found

    def evidence(self, cite: Cite) -> Evidence:
        r = cite.result
        return Evidence.model_construct(
            analyte=cite.analyte,
            value=r.value,
            unit=CANONICAL_UNIT[cite.analyte],
            collected_at=r.collected_at,
            accession=r.accession,
            status=r.status,
            day=self.day_of(r),
            detected=r.detected,
            method=r.method,
            sensitivity=r.sensitivity,
            note=cite.note,
        )


#: Zones without daylight saving time or historical offset changes: day numbers by arithmetic.
FIXED_OFFSET_ZONES = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "GMT", "Etc/GMT", "Zulu"}
)


@lru_cache(maxsize=4096)
def _local_midnight(day0: datetime, timezone: str) -> float | Literal[False]:
    """Epoch seconds of day 0's local midnight in a fixed-offset zone, else False.

    Only zones known to have one offset for all time qualify (UTC by default); any zone with
    daylight saving time or offset changes -- even rare ones such as Ramadan rules -- takes the
    exact calendar path.
    """
    if timezone not in FIXED_OFFSET_ZONES:
        return False
    local = day0.astimezone(ZoneInfo(timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class Rule(Protocol):
    """One module per rule under ``streams/rules``; registered in ``streams.core.engine.RULES``."""

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

    def may_change(self, ctx: RuleInput, analyte: Analyte, result: StoredResult) -> bool:
        """False only when this new result provably cannot change the rule's findings.

        Lets the engine skip a re-evaluation (and its reconcile) on the hot path; when in doubt,
        True. The findings themselves always come from ``evaluate`` over the whole history.
        """
        ...

    def evaluate(self, ctx: RuleInput) -> list[Finding]: ...


class EveryResultMatters:
    """Mixin for rules whose findings any result of their analytes may change."""

    def may_change(self, ctx: RuleInput, analyte: Analyte, result: StoredResult) -> bool:
        return True
