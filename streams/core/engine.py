"""The pure rule engine: ``step``, ``apply_all`` and ``tick`` (docs/architecture.md "The core").

No Kafka, clock, network or global state here. ``tick`` is the only entry for wall-clock time
(``now`` is passed in). The Faust worker and ``carwatch replay`` call these same functions.

- ``apply_all`` is the entry for drivers that see several records of one patient at once
  (replay, the worker's batches): consecutive lab results with one collection time are one
  specimen, applied together -- the rules evaluate once, after all of them, so that a specimen's
  CD19 % and absolute count never alert on half a specimen (docs/clinical-spec.md "Same
  specimen"). Its alert events are attached to the group's last record.
- The engine dispatches from the rules' declarations (``Reads``): a change of an analyte or an
  event kind re-evaluates the rules that read it, and the rules built on those; no rule is a
  special case here.
- Pruning (``prune``) folds what each rule needs from the results before a cut into the rule's
  carry first, and forgets only alerts whose episodes closed before the cut: pruning alone never
  raises, updates, resolves or retracts anything.
- Once ``end_of_follow_up`` is recorded, every record that arrives later is ``not_monitored``
  (decision: a result collected before the end but reported after it raises nothing about a
  patient no longer followed), and ``tick`` raises nothing.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from schemas.alert import AlertEvent
from schemas.clinical import ClinicalEvent, Infusion
from schemas.lab_result import LabResult
from schemas.vocab import Analyte, ClinicalEventKind, Outcome, ResultStatus, RuleName
from streams.core.lifecycle import Step, covers_open, forget_settled, order, quiet, reconcile
from streams.core.policy import Policy
from streams.core.rules import (
    bca_loss,
    bca_not_established,
    hct_consolidation,
    hypogammaglobulinemia,
    iec_hs,
    monitoring_gap,
    mrd_positive,
    prolonged_neutropenia,
)
from streams.core.rules.base import Cite, Rule, RuleInput
from streams.core.state import ClinicalEventRecord, Enrollment, PatientState, StoredResult
from streams.core.text import NAME, quantity

PatientEvent = LabResult | Infusion | ClinicalEvent

#: Every rule, in the order of docs/clinical-spec.md (a rule comes after those it builds on).
RULES: tuple[Rule, ...] = (
    bca_loss.RULE,
    bca_not_established.RULE,
    hypogammaglobulinemia.RULE,
    prolonged_neutropenia.RULE,
    iec_hs.RULE,
    mrd_positive.RULE,
    hct_consolidation.RULE,
    monitoring_gap.RULE,
)
RULES_BY_NAME: dict[RuleName, Rule] = {rule.name: rule for rule in RULES}
RULE_ORDER = tuple(rule.name for rule in RULES)
GAPS = monitoring_gap.RULE
#: Course events kept when older events are pruned (their effects outlive the window).
_KEPT_EVENTS = frozenset(
    {
        ClinicalEventKind.HCT_PERFORMED,
        ClinicalEventKind.RELAPSE,
        ClinicalEventKind.END_OF_FOLLOW_UP,
    }
)
#: Settings every rule reads through the engine (day numbers; what a rule may build on): part of
#: every alert id's fingerprint besides the rule's own settings.
COMMON_SETTINGS = ("timezone", "alert_on_preliminary")
_PRELIMINARY = ResultStatus.PRELIMINARY
#: statuses of a record that is a result of its own (not a later version of one)
_NEW_VERSIONS = (ResultStatus.FINAL, ResultStatus.PRELIMINARY)
#: Pruning waits until the history exceeds its bounds by this much, then cuts back to them.
_WINDOW_SLACK = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class StepResult:
    state: PatientState
    alerts: list[AlertEvent]
    outcome: Outcome


def step(
    state: PatientState, event: PatientEvent, policy: Policy
) -> tuple[PatientState, list[AlertEvent]]:
    """Apply one normalised record to one patient's state; return the alert events it causes."""
    result = apply(state, event, policy)
    return result.state, result.alerts


def apply(state: PatientState, event: PatientEvent, policy: Policy) -> StepResult:
    """``step`` with the record's outcome (accepted, duplicate, not_enrolled, ...) for counting."""
    return apply_all(state, [event], policy)[0]


def apply_all(
    state: PatientState, events: Sequence[PatientEvent], policy: Policy
) -> list[StepResult]:
    """Apply one patient's records in order; one ``StepResult`` per record, in input order."""
    results: list[StepResult] = []
    index = 0
    while index < len(events):
        event = events[index]
        if isinstance(event, LabResult):
            end = index + 1
            while end < len(events) and _joins(events[index:end], events[end]):  # type: ignore[arg-type]
                end += 1
            results += _apply_specimen(state, events[index:end], policy)  # type: ignore[arg-type]
            index = end
            continue
        if isinstance(event, Infusion):
            results.append(_apply_infusion(state, event, policy))
        else:
            results.append(_apply_event(state, event, policy))
        index += 1
    return results


def tick(
    state: PatientState, now: datetime, policy: Policy
) -> tuple[PatientState, list[AlertEvent]]:
    """Advance the patient's wall clock to ``now``: only monitoring gaps depend on it."""
    if state.enrollment is None:
        return state, []
    if state.clock is None or now > state.clock:
        state.clock = now
    ctx = _context(state, policy)
    if not GAPS.observe(ctx, now):
        return state, []
    return state, _evaluate(ctx, (GAPS,), Step(at=now, decided_at=now))


def _joins(group: Sequence[LabResult], other: PatientEvent) -> bool:
    """Does ``other`` join ``group`` (consecutive lab results of one collection time)?
    Decision: a correction or cancellation is a later version of a result, not another result of
    the specimen -- it starts a new group, so a result and its cancellation in one file still
    raise and retract. The revisions of one corrected report (one report time, each result once)
    are one group, so a corrected CD19 % and count never alert on half a specimen; a second
    version of the same result is a later report. New results of the specimen join any group
    (docs/clinical-spec.md "Same specimen")."""
    first = group[0]
    if not (
        isinstance(other, LabResult)
        and other.patient_id == first.patient_id
        and other.collected_at == first.collected_at
    ):
        return False
    if other.status in _NEW_VERSIONS:
        return True
    return all(
        r.status not in _NEW_VERSIONS
        and r.resulted_at == other.resulted_at
        and (r.analyte, r.accession) != (other.analyte, other.accession)
        for r in group
    )


def _apply_infusion(state: PatientState, event: Infusion, policy: Policy) -> StepResult:
    enrollment = Enrollment(
        infused_at=event.infused_at,
        product=event.product,
        costimulatory_domain=event.costimulatory_domain,
        prior_hct=event.prior_hct,
        hct_eligible=event.hct_eligible,
        risk_factors=event.risk_factors,
    )
    if state.enrollment == enrollment:
        return StepResult(state, [], Outcome.DUPLICATE)
    state.enrollment = enrollment
    at = event.infused_at
    change = "the infusion record changed (day 0 or enrollment fields)"
    alerts = _evaluate(
        _context(state, policy), RULES, Step(at=at, decided_at=at, change=lambda: change)
    )
    return StepResult(state, alerts, Outcome.ACCEPTED)


def _apply_event(state: PatientState, event: ClinicalEvent, policy: Policy) -> StepResult:
    if state.enrollment is None:
        return StepResult(state, [], Outcome.NOT_ENROLLED)
    if state.ended_at() is not None and event.kind is not ClinicalEventKind.END_OF_FOLLOW_UP:
        return StepResult(state, [], Outcome.NOT_MONITORED)
    record = ClinicalEventRecord(kind=event.kind, at=event.at, detail=event.detail)
    outcome = state.record_event(record)
    if outcome is not Outcome.ACCEPTED:
        return StepResult(state, [], outcome)
    ctx = _context(state, policy)
    rules = _rules_for(frozenset(), frozenset({event.kind}))
    change = f"{event.kind.value} recorded on day {ctx.day(event.at)}"
    alerts = _evaluate(ctx, rules, Step(at=event.at, decided_at=event.at, change=lambda: change))
    return StepResult(state, alerts, outcome)


def _apply_specimen(
    state: PatientState, group: Sequence[LabResult], policy: Policy
) -> list[StepResult]:
    if state.enrollment is None:
        return [StepResult(state, [], Outcome.NOT_ENROLLED) for _ in group]
    if state.ended_at() is not None:
        return [StepResult(state, [], Outcome.NOT_MONITORED) for _ in group]
    outcomes: list[Outcome] = []
    changes: list[tuple[Analyte, StoredResult, StoredResult | None]] = []
    decided: list[datetime] = []
    for result in group:
        analyte = result.analyte
        assert analyte is not None, "ingest resolves the analyte before the engine"
        stored = _stored(result)
        outcome, replaced = state.record_result(analyte, stored)
        outcomes.append(outcome)
        if outcome is Outcome.ACCEPTED and (
            stored.status is not _PRELIMINARY or policy.alert_on_preliminary
        ):
            changes.append((analyte, stored, replaced))
            decided.append(result.resulted_at or result.collected_at)
    alerts: list[AlertEvent] = []
    if changes:
        ctx = _context(state, policy)
        if all(replaced is None and not stored.is_cancelled for _, stored, replaced in changes):
            ctx.appended = tuple((a, stored) for a, stored, _ in changes)
        analyte, stored, _ = changes[-1]
        step_ = Step(
            at=group[0].collected_at,
            decided_at=max(decided),
            trigger=Cite(analyte, stored, "result that triggered this event"),
            change=lambda: _describe_changes(ctx, changes),
        )
        alerts = _evaluate(ctx, _rules_for(frozenset(a for a, _, _ in changes), frozenset()), step_)
        newest = max(stored.collected_at for _, stored, _ in changes)
        if _may_need_pruning(state, policy, newest, {a for a, _, _ in changes}):
            prune(state, policy)
    results = [StepResult(state, [], outcome) for outcome in outcomes]
    results[-1] = StepResult(state, alerts, outcomes[-1])
    return results


def _stored(result: LabResult) -> StoredResult:
    return StoredResult(
        collected_at=result.collected_at,
        value=result.value,
        status=result.status,
        accession=result.accession,
        source=result.source,
        resulted_at=result.resulted_at,
        detected=result.detected,
        method=result.method,
        sensitivity=result.sensitivity,
        comparator=result.comparator,
    )


def _describe_changes(
    ctx: RuleInput, changes: list[tuple[Analyte, StoredResult, StoredResult | None]]
) -> str:
    """What changed in the history, in words (retraction texts name it)."""
    parts = []
    for analyte, stored, replaced in changes:
        name = NAME[analyte]
        what = f"{name} {stored.accession or 'without accession'} (day {ctx.day_of(stored)})"
        if stored.is_cancelled:
            parts.append(f"{what} was cancelled")
        elif replaced is not None and not replaced.is_cancelled:
            parts.append(
                f"{what} was {stored.status.value}: {quantity(analyte, replaced)} → "
                f"{quantity(analyte, stored)}"
            )
        else:
            later = [r for r in ctx.results(analyte) if r.collected_at > stored.collected_at]
            kind = "late result" if later else "result"
            parts.append(
                f"{name} {kind} {quantity(analyte, stored)} collected on day "
                f"{ctx.day_of(stored)} was added"
            )
    return "; ".join(parts)


def _context(state: PatientState, policy: Policy) -> RuleInput:
    return RuleInput(state=state, policy=policy, registry=RULES_BY_NAME)


@cache
def _rules_for(
    analytes: frozenset[Analyte], kinds: frozenset[ClinicalEventKind]
) -> tuple[Rule, ...]:
    """The rules that read these analytes or event kinds, and the rules built on them, in
    evaluation order."""
    chosen = {r.name for r in RULES if r.reads.analytes & analytes or r.reads.events & kinds}
    for rule in RULES:  # dependents come after their dependencies
        if chosen & set(rule.reads.depends_on):
            chosen.add(rule.name)
    return tuple(rule for rule in RULES if rule.name in chosen)


def _evaluate(ctx: RuleInput, rules: Sequence[Rule], step: Step) -> list[AlertEvent]:
    """Reconcile the rules' findings. A rule that reads nothing of this step's change is here
    because a rule it builds on reads it, and is always evaluated: the episodes it builds on can
    change without any announcement (a resolved alert whose onset a late correction moves says
    nothing, yet the advice built on that onset may now hold)."""
    events: list[AlertEvent] = []
    for rule in rules:
        fingerprint = ctx.policy.fingerprint((*COMMON_SETTINGS, *rule.reads.settings))
        evaluation = ctx.evaluation(rule.name)
        if not evaluation.complete and not covers_open(ctx.state, rule.name, evaluation.findings):
            evaluation = ctx.complete_evaluation(rule.name)  # never expected: be safe
        if not evaluation.complete and quiet(ctx.state, rule.name, evaluation.findings):
            continue
        if not evaluation.findings and not any(
            a.rule is rule.name for a in ctx.state.alerts.values()
        ):
            continue  # nothing found, nothing announced: nothing to reconcile
        events += reconcile(
            ctx, rule.name, fingerprint, evaluation.findings, step, complete=evaluation.complete
        )
    return order(events, RULE_ORDER)


def _may_need_pruning(
    state: PatientState, policy: Policy, newest: datetime, analytes: set[Analyte]
) -> bool:
    """A cheap test before ``_cut``: only a new result can push the history past its bounds."""
    cap = policy.max_results_per_analyte
    if any(len(state.results.get(a, ())) > cap + cap // 4 for a in analytes):
        return True
    oldest = state.earliest()
    window = timedelta(days=policy.history_window_days)
    return oldest is not None and oldest < newest - window - _WINDOW_SLACK


def prune(state: PatientState, policy: Policy) -> None:
    """Bound the history (``Policy.history_window_days``, ``max_results_per_analyte``).

    Every rule's carry is advanced to the cut before the results are dropped; closed alerts of
    episodes wholly before the cut are forgotten (never retracted). Nothing is emitted.
    """
    cut = _cut(state, policy)
    if cut is None:
        return
    ctx = _context(state, policy)
    carries = {rule.name: rule.carry(ctx, cut) for rule in RULES}
    state.carries = {name: carry for name, carry in carries.items() if carry is not None}
    state.cut = cut
    for analyte, history in list(state.results.items()):
        keep = 0
        while keep < len(history) and history[keep].collected_at < cut:
            keep += 1
        del history[:keep]
        if not history:
            del state.results[analyte]
    state.accessions.clear()
    state.oldest = None
    state.events = [e for e in state.events if e.at >= cut or e.kind in _KEPT_EVENTS]
    ctx = _context(state, policy)
    for rule in RULES:
        forget_settled(ctx, rule.name, ctx.findings(rule.name))


def _cut(state: PatientState, policy: Policy) -> datetime | None:
    """Where to cut the history now, or None while it is within its bounds (plus slack)."""
    histories = [h for h in state.results.values() if h]
    if not histories:
        return None
    cap = policy.max_results_per_analyte
    newest = oldest = histories[0][-1].collected_at
    too_many = False
    for history in histories:
        newest = max(newest, history[-1].collected_at)
        oldest = min(oldest, history[0].collected_at)
        too_many = too_many or len(history) > cap + cap // 4
    window = timedelta(days=policy.history_window_days)
    if not too_many and oldest >= newest - window - _WINDOW_SLACK:
        return None
    cut = newest - window
    for history in histories:
        if len(history) > cap:
            cut = max(cut, history[len(history) - cap].collected_at)
    if state.cut is not None and cut <= state.cut:
        return None
    return cut
