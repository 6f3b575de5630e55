"""The pure rule engine: ``step`` and ``tick`` (DESIGN.md "The core: a pure rule engine").

No Kafka, clock, network or global state here. ``tick`` is the only entry for wall-clock time
(``now`` is passed in). The Faust agents and ``carwatch replay`` call these same functions.

``apply`` is ``step`` plus the record's outcome (accepted, duplicate, not_enrolled, ...) for
counting; ``step`` keeps the signature of the design. Both update ``state`` in place and return it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas.alert import AlertEvent
from schemas.clinical import ClinicalEvent, Infusion
from schemas.lab_result import LabResult
from schemas.vocab import Analyte, Outcome, ResultStatus, RuleName
from streams.core.lifecycle import reconcile
from streams.core.policy import Policy
from streams.core.rules import (
    bca_loss,
    hct_consolidation,
    hypogammaglobulinemia,
    iec_hs,
    monitoring_gap,
    mrd_positive,
    prolonged_neutropenia,
)
from streams.core.rules.base import Cite, Rule, RuleInput
from streams.core.state import ClinicalEventRecord, Enrollment, PatientState, StoredResult

PatientEvent = LabResult | Infusion | ClinicalEvent

#: Evaluation order: a rule comes after the rules it depends on.
RULES: tuple[Rule, ...] = (
    bca_loss.RULE,
    hypogammaglobulinemia.RULE,
    prolonged_neutropenia.RULE,
    iec_hs.RULE,
    mrd_positive.RULE,
    hct_consolidation.RULE,
    monitoring_gap.RULE,
)
RULES_BY_NAME: dict[RuleName, Rule] = {rule.name: rule for rule in RULES}


def _affected(analytes: frozenset[Analyte], events: frozenset[str]) -> tuple[Rule, ...]:
    """Rules that read these analytes or events directly (dependents are added when needed)."""
    return tuple(rule for rule in RULES if rule.analytes & analytes or rule.events & events)


_RULES_FOR_ANALYTE = {a: _affected(frozenset((a,)), frozenset()) for a in Analyte}
_RULES_FOR_EVENT = {
    kind: _affected(frozenset(), frozenset((kind,)))
    for kind in ("ivig_given", "reinfusion", "crs_resolved")
}


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


def apply_all(
    state: PatientState, events: Sequence[PatientEvent], policy: Policy
) -> list[StepResult]:
    """Apply one patient's records in order; one ``StepResult`` per record, in input order.

    This is the entry for every driver that sees several records at once (replay, the worker's
    batches): results of one specimen that arrive together are applied together
    (clinical-rules.md 0 "Same specimen"), their alert events attached to the group's last record.
    """
    return [apply(state, event, policy) for event in events]


def apply(state: PatientState, event: PatientEvent, policy: Policy) -> StepResult:
    if isinstance(event, Infusion):
        return _apply_infusion(state, event, policy)
    if state.enrollment is None:
        return StepResult(state, [], Outcome.NOT_ENROLLED)
    if isinstance(event, ClinicalEvent):
        outcome = state.record_event(ClinicalEventRecord(kind=event.kind, at=event.at))
        rules = _RULES_FOR_EVENT.get(event.kind.value, ()) if outcome is Outcome.ACCEPTED else ()
        alerts = _evaluate(_context(state, policy), rules, event.at, event.at, None)
        return StepResult(state, alerts, outcome)
    return _apply_result(state, event, policy)


def tick(
    state: PatientState, now: datetime, policy: Policy
) -> tuple[PatientState, list[AlertEvent]]:
    """Advance the patient's wall clock to ``now``: only monitoring gaps depend on it."""
    if state.enrollment is None:
        return state, []
    if state.clock is None or now > state.clock:
        state.clock = now
    rules = (RULES_BY_NAME[RuleName.MONITORING_GAP],)
    return state, _evaluate(_context(state, policy), rules, now, now, None)


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
    alerts = _evaluate(_context(state, policy), RULES, event.infused_at, event.infused_at, None)
    return StepResult(state, alerts, Outcome.ACCEPTED)


def _apply_result(state: PatientState, result: LabResult, policy: Policy) -> StepResult:
    analyte = result.analyte
    assert analyte is not None, "ingest resolves the analyte before the engine"
    stored = StoredResult(
        collected_at=result.collected_at,
        value=result.value,
        status=result.status,
        accession=result.accession,
        source=result.source,
        resulted_at=result.resulted_at,
        detected=result.detected,
        method=result.method,
        sensitivity=result.sensitivity,
    )
    outcome, replaced = state.record_result(analyte, stored)
    if outcome is not Outcome.ACCEPTED or (
        result.status is ResultStatus.PRELIMINARY and not policy.alert_on_preliminary
    ):
        return StepResult(state, [], outcome)
    decided_at = result.resulted_at or result.collected_at
    trigger = Cite(analyte, stored, "result that triggered this event")
    ctx = _context(state, policy)
    changed = (stored,) if replaced is None else (stored, replaced)
    rules = tuple(
        rule
        for rule in _RULES_FOR_ANALYTE[analyte]
        if any(rule.may_change(ctx, analyte, version) for version in changed)
    )
    alerts = _evaluate(ctx, rules, result.collected_at, decided_at, trigger)
    if state.needs_pruning(analyte, policy.history_window_days, policy.max_results_per_analyte):
        state.prune(policy.history_window_days, policy.max_results_per_analyte)
    return StepResult(state, alerts, outcome)


def _context(state: PatientState, policy: Policy) -> RuleInput:
    return RuleInput(state=state, policy=policy, clock=state.clock, registry=RULES_BY_NAME)


def _evaluate(
    ctx: RuleInput,
    rules: tuple[Rule, ...],
    trigger_time: datetime,
    decided_at: datetime,
    trigger: Cite | None,
) -> list[AlertEvent]:
    if not rules:
        return []
    state = ctx.state
    alerts: list[AlertEvent] = []
    changed: set[RuleName] = set()
    direct = {rule.name for rule in rules}
    for rule in RULES:
        # A dependent rule reads only its dependencies' findings: if none of them announced a
        # change in this step, its own findings cannot have changed either.
        if rule.name not in direct and not rule.depends_on & changed:
            continue
        horizon = _horizon(state, rule)
        events = reconcile(
            ctx, rule.name, ctx.findings(rule.name), trigger_time, decided_at, trigger, horizon
        )
        if events:
            changed.add(rule.name)
            alerts.extend(events)
    return alerts


def _horizon(state: PatientState, rule: Rule) -> datetime | None:
    """Latest pruning cut among the analytes a rule reads (None while nothing was pruned)."""
    if not state.pruned_before:
        return None
    cuts = [state.pruned_before[a] for a in rule.analytes if a in state.pruned_before]
    return max(cuts) if cuts else None
