"""What a rule is: a pure function of a patient's history to the episodes it recognises.

A rule never emits events itself. It returns every episode in which its alert condition held at
some time on the history as now known -- open ones and closed ones -- and
``streams.core.lifecycle.reconcile`` compares them with what subscribers were already told:
new episode → ``raised``, escalation → ``updated``, closed → ``resolved``, gone from the history
(the condition never held) → ``retracted``. Re-evaluating the history is what makes late,
corrected and cancelled results come out right, and makes the result independent of arrival order.

Each rule declares what it reads (``Reads``: analytes, clinical event kinds, whether ``tick``
concerns it, its policy settings, the rules whose results it builds on); the engine dispatches
from those declarations alone (docs/architecture.md "Rules").

Most rules are *scans* (``ScanRule``): an accumulator folded over the rule's items -- specimens
(the results of its analytes collected at one instant) and clinical events, in clinical-time
order. Pruning folds the items before the cut into the accumulator and stores it
(``PatientState.carries``), so a rule resumes from there and pruning never decides anything.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

from schemas.alert import Evidence, RiskFactorNote
from schemas.vocab import (
    CANONICAL_UNIT,
    Analyte,
    ClinicalEventKind,
    ResultStatus,
    RiskFactor,
    RuleName,
    Severity,
)
from streams.core.carry import decode, encode
from streams.core.policy import Policy
from streams.core.state import ClinicalEventRecord, PatientState, StoredResult
from streams.core.text import RISK_FACTOR_LABEL, TABLE_1, clean, risk_factor_list

Acc = TypeVar("Acc")

REVIEW = (
    "Westhafen 2025: Deimundo Roura C, et al. Opportunities and Challenges with CAR T-cell "
    "Treatment of Children and Young Adults with B-Cell Acute Lymphoblastic Leukemia: Review and "
    "Recommendations from the Westhafen Intercontinental Group. Transplant Cell Ther 2025, "
    "doi:10.1016/j.jtct.2025.10.023"
)

_PRELIMINARY, _CANCELLED = ResultStatus.PRELIMINARY, ResultStatus.CANCELLED

#: Course events that end a rule's monitoring (docs/clinical-spec.md "Course events").
HCT_PERFORMED = ClinicalEventKind.HCT_PERFORMED
RELAPSE = ClinicalEventKind.RELAPSE
END_OF_FOLLOW_UP = ClinicalEventKind.END_OF_FOLLOW_UP


@dataclass(frozen=True, slots=True)
class Reads:
    """What a rule reads: the engine evaluates a rule only when one of these changes."""

    analytes: frozenset[Analyte] = frozenset()
    events: frozenset[ClinicalEventKind] = frozenset()
    #: ``tick(now)`` concerns the rule (only monitoring gaps)
    tick: bool = False
    #: the ``Policy`` fields the rule reads (its alert ids fingerprint these)
    settings: tuple[str, ...] = ()
    #: rules whose evaluation this one builds on (evaluated first)
    depends_on: tuple[RuleName, ...] = ()

    @property
    def ordered(self) -> tuple[Analyte, ...]:
        """``analytes`` in the vocabulary's order (a specimen lists its results in it)."""
        return _in_vocabulary_order(self.analytes)


@dataclass(frozen=True, slots=True)
class Cite:
    """One result an alert rests on; turned into an ``Evidence`` only when an event is emitted."""

    analyte: Analyte
    result: StoredResult
    note: str | None = None


@dataclass(frozen=True, slots=True)
class RiskNote:
    """A recorded risk factor shown as context (``RiskFactorNote`` on the wire)."""

    factor: RiskFactor


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
    context: tuple[Cite | RiskNote, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True, slots=True)
class Specimen:
    """The results of a rule's analytes collected at one instant (one specimen)."""

    at: datetime
    day: int
    results: tuple[tuple[Analyte, StoredResult], ...]

    def of(self, analyte: Analyte) -> list[StoredResult]:
        return [r for a, r in self.results if a is analyte]

    def lowest(self, analyte: Analyte) -> StoredResult | None:
        """The specimen's lowest value of ``analyte``: one specimen is one observation, and
        two values of it (two labs, a repeat) are read conservatively, as the worse."""
        values = [r for a, r in self.results if a is analyte and r.value is not None]
        return min(values, key=lambda r: r.value or 0.0) if values else None

    def highest(self, analyte: Analyte) -> StoredResult | None:
        values = [r for a, r in self.results if a is analyte and r.value is not None]
        return max(values, key=lambda r: r.value or 0.0) if values else None


@dataclass(frozen=True, slots=True)
class Course:
    """A clinical event as a rule item."""

    event: ClinicalEventRecord
    day: int

    @property
    def at(self) -> datetime:
        return self.event.at

    @property
    def kind(self) -> ClinicalEventKind:
        return self.event.kind


Item = Specimen | Course


@dataclass
class Basis:
    """A finding another rule builds on, kept in the accumulator beyond pruning (the first early
    loss of BCA, the first MRD positivity: ``hct_consolidation`` reads them)."""

    raised_at: datetime
    evidence: list[tuple[Analyte, StoredResult, str]]

    def cites(self) -> tuple[Cite, ...]:
        return tuple(Cite(analyte, result, note) for analyte, result, note in self.evidence)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A rule's findings on the current history, and its accumulator after the last item.

    ``complete`` is False for an incremental evaluation (``ScanRule.advance``): its findings are
    then only the episodes that the new items closed or left open; earlier closed episodes are
    unchanged by construction (a scan never looks back) and are not repeated.
    """

    findings: list[Finding]
    acc: Any = None
    complete: bool = True


@dataclass(slots=True)
class Tail:
    """A rule's live accumulator after its last item (``PatientState.tails``; never stored)."""

    acc: Any
    last_at: datetime | None


def episode_key(start: datetime, prefix: str = "") -> str:
    from schemas.base import utc_isoformat

    return f"{prefix}{utc_isoformat(start)}"


@dataclass
class RuleInput:
    """Read-only view of one patient for the rules, with per-evaluation caches.

    ``results(analyte)`` yields only results the rules may build on: final and corrected (and
    preliminary when ``Policy.alert_on_preliminary``), never cancellation tombstones.
    """

    state: PatientState
    policy: Policy
    #: the engine's rule registry, for rules that read other rules' evaluations
    registry: "Mapping[RuleName, Rule]" = field(default_factory=dict)
    _results: dict[Analyte, list[StoredResult]] = field(default_factory=dict)
    _evaluations: dict[RuleName, Evaluation] = field(default_factory=dict)
    #: set by the engine when this step only appends new results collected at one instant:
    #: scan rules whose tails end before it then feed just this specimen (``advance``)
    appended: tuple[tuple[Analyte, StoredResult], ...] = ()
    _midnight: float | Literal[False] | None = None

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

    def start_of_day(self, day: int) -> datetime:
        """The instant day number ``day`` begins (local midnight in the policy time zone)."""
        tz = self.policy.tz
        date = self.day0.astimezone(tz).date() + timedelta(days=day)
        return datetime(date.year, date.month, date.day, tzinfo=tz).astimezone(UTC)

    def day_of(self, result: StoredResult) -> int:
        """``day(result.collected_at)``, from the result's precomputed epoch seconds."""
        if self._midnight is None:
            self._midnight = _local_midnight(self.day0, self.policy.timezone)
        if self._midnight is not False:
            return int((result.collected_ts - self._midnight) // 86400)
        return self.day(result.collected_at)

    def results(self, analyte: Analyte) -> list[StoredResult]:
        cached = self._results.get(analyte)
        if cached is None:
            cached = [r for r in self.state.results.get(analyte, ()) if self.usable(r)]
            self._results[analyte] = cached
        return cached

    def usable(self, result: StoredResult) -> bool:
        """May a rule build on this result? Final or corrected (preliminary only by policy)."""
        status = result.status
        if status is _PRELIMINARY:
            return self.policy.alert_on_preliminary
        return status is not _CANCELLED

    def events(self) -> list[ClinicalEventRecord]:
        return self.state.events

    def items(self, reads: Reads, before: datetime | None = None) -> list[Item]:
        """The rule's items after the cut (and before ``before``), in clinical-time order.

        At one instant, clinical events come before specimens: a result collected at the moment
        a course event is recorded is read as after it.
        """
        by_time: dict[datetime, list[tuple[Analyte, StoredResult]]] = {}
        for analyte in reads.ordered:
            for result in self.results(analyte):
                if result.value is None and result.detected is None:
                    continue
                if before is not None and result.collected_at >= before:
                    break
                by_time.setdefault(result.collected_at, []).append((analyte, result))
        cut = self.state.cut
        timed: list[tuple[datetime, int, Item]] = [
            (e.at, 0, Course(e, self.day(e.at)))
            for e in self.state.events
            if e.kind in reads.events
            and (cut is None or e.at >= cut)
            and (before is None or e.at < before)
        ]
        timed += [
            (at, 1, Specimen(at, self.day(at), tuple(results))) for at, results in by_time.items()
        ]
        timed.sort(key=lambda entry: (entry[0], entry[1]))
        return [item for _, _, item in timed]

    def evaluation(self, rule: RuleName) -> Evaluation:
        """A rule's evaluation on this history, computed once per step (dependents read it):
        incremental when the step only appends (``appended_at``) and the rule has a tail."""
        found = self._evaluations.get(rule)
        if found is None:
            evaluator = self.registry[rule]
            if self.appended and isinstance(evaluator, ScanRule):
                found = evaluator.advance(self, self.appended)
            if found is None:
                found = evaluator.evaluate(self)
            self._evaluations[rule] = found
        return found

    def complete_evaluation(self, rule: RuleName) -> Evaluation:
        """The full evaluation from the carry, replacing an incremental one of this step."""
        found = self._evaluations[rule] = self.registry[rule].evaluate(self)
        return found

    def findings(self, rule: RuleName) -> list[Finding]:
        return self.evaluation(rule).findings

    def evidence(self, cite: Cite) -> Evidence:
        r = cite.result
        return Evidence.model_construct(
            kind="result",
            analyte=cite.analyte,
            value=clean(r.value),
            comparator=r.comparator,
            unit=CANONICAL_UNIT[cite.analyte],
            collected_at=r.collected_at,
            accession=r.accession,
            status=r.status,
            day=self.day_of(r),
            detected=r.detected,
            method=r.method,
            sensitivity=clean(r.sensitivity),
            note=cite.note,
        )

    def context_item(self, item: Cite | RiskNote) -> Evidence | RiskFactorNote:
        if isinstance(item, Cite):
            return self.evidence(item)
        return RiskFactorNote.model_construct(
            kind="risk_factor",
            risk_factor=item.factor,
            label=RISK_FACTOR_LABEL[item.factor],
            table_1=item.factor in TABLE_1,
        )

    def risk_context(self) -> tuple[RiskNote, ...]:
        """The recorded risk factors, Table 1 ones first (shown with B-cell, MRD, HCT alerts)."""
        assert self.state.enrollment is not None
        factors = sorted(
            self.state.enrollment.risk_factors, key=lambda f: (f not in TABLE_1, f.value)
        )
        return tuple(RiskNote(f) for f in factors)

    def risk_sentence(self) -> str:
        """``" Risk factors recorded at infusion: ..."`` (empty when none), for alert texts."""
        assert self.state.enrollment is not None
        text = risk_factor_list(self.state.enrollment.risk_factors)
        return f" {text}." if text else ""


#: Zones without daylight saving time or historical offset changes: day numbers by arithmetic.
FIXED_OFFSET_ZONES = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "GMT", "Etc/GMT", "Zulu"}
)


_VOCABULARY_INDEX = {analyte: index for index, analyte in enumerate(Analyte)}


@lru_cache(maxsize=64)
def _in_vocabulary_order(analytes: frozenset[Analyte]) -> tuple[Analyte, ...]:
    return tuple(a for a in Analyte if a in analytes)


@lru_cache(maxsize=4096)
def _local_midnight(day0: datetime, timezone: str) -> float | Literal[False]:
    """Epoch seconds of day 0's local midnight in a fixed-offset zone, else False.

    Only zones known to have one offset for all time qualify (UTC by default); any zone with
    daylight saving time or offset changes -- even rare ones -- takes the exact calendar path.
    """
    if timezone not in FIXED_OFFSET_ZONES:
        return False
    local = day0.astimezone(ZoneInfo(timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class Rule(Protocol):
    """One module per rule under ``streams/core/rules``; registered in ``streams.core.engine``."""

    @property
    def name(self) -> RuleName: ...

    @property
    def reads(self) -> Reads: ...

    def evaluate(self, ctx: RuleInput) -> Evaluation:
        """Every episode on the current history (from the carry on), and the accumulator."""
        ...

    def carry(self, ctx: RuleInput, cut: datetime) -> Any:
        """What the rule keeps of the items before ``cut`` (JSON-able), or None if nothing."""
        ...


class ScanRule(Generic[Acc]):
    """A rule as an accumulator folded over its items (module docstring).

    Subclasses set ``name``, ``reads`` and ``acc_type`` and implement ``start`` (the accumulator
    before any history), ``feed`` (one item; closed episodes are appended to ``out``) and
    ``open_findings`` (the episode still open after the last item, if any).
    """

    name: RuleName
    reads: Reads
    acc_type: ClassVar[type]

    def start(self, ctx: RuleInput) -> Acc:
        raise NotImplementedError

    def feed(self, ctx: RuleInput, acc: Acc, item: Item, out: list[Finding]) -> None:
        raise NotImplementedError

    def open_findings(self, ctx: RuleInput, acc: Acc) -> list[Finding]:
        raise NotImplementedError

    def resume(self, ctx: RuleInput) -> Acc:
        carried = ctx.state.carries.get(self.name)
        if carried is None:
            return self.start(ctx)
        resumed: Acc = decode(self.acc_type, carried)
        return resumed

    def evaluate(self, ctx: RuleInput) -> Evaluation:
        acc = self.resume(ctx)
        out: list[Finding] = []
        items = ctx.items(self.reads)
        for item in items:
            self.feed(ctx, acc, item, out)
        ctx.state.tails[self.name] = Tail(acc, items[-1].at if items else ctx.state.cut)
        return Evaluation([*out, *self.open_findings(ctx, acc)], acc)

    def advance(
        self, ctx: RuleInput, appended: tuple[tuple[Analyte, StoredResult], ...]
    ) -> Evaluation | None:
        """Feed only the appended specimen to the tail (the step added new results, all
        collected at one instant).

        None when there is no tail, or it has seen something at or after that instant: then the
        step is not an append for this rule and it is evaluated in full.
        """
        tail = ctx.state.tails.get(self.name)
        at = appended[0][1].collected_at
        if tail is None or (tail.last_at is not None and tail.last_at >= at):
            return None
        analytes = self.reads.analytes
        results = [
            (a, r)
            for a, r in appended
            if a in analytes and (r.value is not None or r.detected is not None) and ctx.usable(r)
        ]
        if len(results) > 1:  # the order a full evaluation reads a specimen in
            results.sort(key=lambda pair: (_VOCABULARY_INDEX[pair[0]], pair[1].sort_key()))
        out: list[Finding] = []
        if results:
            self.feed(ctx, tail.acc, Specimen(at, ctx.day(at), tuple(results)), out)
            tail.last_at = at
        return Evaluation([*out, *self.open_findings(ctx, tail.acc)], tail.acc, complete=False)

    def carry(self, ctx: RuleInput, cut: datetime) -> Any:
        acc = self.resume(ctx)
        for item in ctx.items(self.reads, before=cut):
            self.feed(ctx, acc, item, [])
        return encode(acc)


def ending(item: Item, *kinds: ClinicalEventKind) -> ClinicalEventRecord | None:
    """The course event of ``item`` if it is one of ``kinds`` (default: every ending kind)."""
    if not isinstance(item, Course):
        return None
    wanted = kinds or (HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP)
    return item.event if item.kind in wanted else None


def course_sentence(ctx: RuleInput, event: ClinicalEventRecord) -> str:
    """Why monitoring of a rule stopped: ``"relapse recorded on day 200 (cd19_negative)"``."""
    what = {
        HCT_PERFORMED: "HCT performed",
        RELAPSE: "relapse recorded",
        END_OF_FOLLOW_UP: "follow-up ended",
    }.get(event.kind, event.kind.value)
    detail = f" ({event.detail})" if event.detail else ""
    return f"{what} on day {ctx.day(event.at)}{detail}"
