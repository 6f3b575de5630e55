"""Alert lifecycle: compare a rule's findings with what was announced, emit the difference.

Per (patient, rule, episode): ``raised`` → ``updated`` (escalation or new evidence) → ``resolved``
(condition cleared) or ``retracted`` (on the history as now known it never held). A resolved alert
whose resolving result is corrected away -- or whose episode a late result shows never ended --
re-opens with ``updated`` under the same id; a late result that reveals an episode already over
yields ``raised`` then ``resolved`` (docs/clinical-spec.md "Common definitions").

Alert ids: ``alert_id`` = hash(patient id, rule, episode start, fingerprint of the settings the
rule reads), computed when the alert is first raised and stored with it: every later event of the
alert carries it, whatever the policy then says. ``event_id`` = alert id and sequence number.

Episode identity follows the episode, not its first result: when a change of history moves an
open episode's start *earlier* (the condition held all along), the finding keeps the alert it was
announced under -- ``updated``, never ``retracted`` + ``raised``. When it moves the start *later*
(the first qualifying value was corrected or cancelled away), the old alert is retracted and the
episode is raised under the id of its new start.

Order of the events of one step: retractions first; then each alert's events in life-cycle
order; alerts ordered by the clinical time of their first event in the step, then by rule in the
order of docs/clinical-spec.md (``order``).
"""

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas.alert import AlertEvent
from schemas.vocab import AlertAction, ResultStatus, RuleName
from streams.core.rules.base import Cite, Finding, RuleInput, Texts
from streams.core.state import AlertStatus, AnnouncedAlert, PatientState

_OPEN = AlertStatus.OPEN
_LIFECYCLE = {
    AlertAction.RAISED: 0,
    AlertAction.UPDATED: 1,
    AlertAction.RESOLVED: 2,
    AlertAction.RETRACTED: 3,
}


def alert_id(patient_id: str, rule: RuleName, episode: str, settings_fingerprint: str) -> str:
    material = "\x1f".join((patient_id, rule.value, episode, settings_fingerprint))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Step:
    """What triggered one evaluation: its clinical time, decision time, result and change."""

    at: datetime
    decided_at: datetime
    trigger: Cite | None = None
    #: what changed in the history, for retraction texts ("ANC A-12 (day 9) cancelled");
    #: computed only when a retraction is emitted
    change: Callable[[], str] | None = None


@dataclass(frozen=True, slots=True)
class Match:
    finding: Finding
    key: str
    announced: AnnouncedAlert | None


def match(
    alerts: dict[str, AnnouncedAlert], rule: RuleName, findings: list[Finding]
) -> tuple[list[Match], list[str]]:
    """Pair findings with the alerts announced for them; return the unmatched announced keys."""
    prefix = f"{rule.value}|"
    seen: set[str] = {prefix + f.episode_key for f in findings if prefix + f.episode_key in alerts}
    pairs: list[Match] = []
    for finding in findings:
        key = prefix + finding.episode_key
        announced = alerts.get(key)
        if announced is None or announced.status is AlertStatus.RETRACTED:
            key, announced = _lineage(alerts, rule, finding, seen) or (key, announced)
        seen.add(key)
        pairs.append(Match(finding, key, announced))
    unmatched = [key for key, a in alerts.items() if a.rule is rule and key not in seen]
    return pairs, unmatched


def reconcile(
    ctx: RuleInput,
    rule: RuleName,
    fingerprint: str,
    findings: list[Finding],
    step: Step,
    complete: bool = True,
) -> list[AlertEvent]:
    """Events that bring subscribers from the announced alerts to ``findings`` of one rule.

    With ``complete=False`` (an incremental evaluation) ``findings`` are only the episodes the
    new items touched: alerts they do not name are left as they are, never retracted.
    """
    alerts = ctx.state.alerts
    pairs, unmatched = match(alerts, rule, findings)
    events: list[AlertEvent] = []
    for pair in pairs:
        finding, announced = pair.finding, pair.announced
        if announced is None or announced.status is AlertStatus.RETRACTED:
            announced = _announce(ctx, pair.key, finding, announced, fingerprint)
            raised_at = finding.raised_at
            events.append(_event_of(ctx, announced, finding, AlertAction.RAISED, raised_at, step))
            if not finding.is_open:
                events.append(_close(ctx, announced, finding, step))
        elif announced.status is AlertStatus.OPEN:
            if _changed(announced, finding):
                events.append(_update(ctx, announced, finding, step))
            if not finding.is_open:
                events.append(_close(ctx, announced, finding, step))
        elif finding.is_open:  # resolved, and on the history as now known it never ended
            announced.status = AlertStatus.OPEN
            events.append(_update(ctx, announced, finding, step))
    for key in unmatched if complete else ():
        announced = alerts[key]
        if announced.status is not AlertStatus.RETRACTED:
            events.append(_retraction(ctx, announced, step))
    return events


def quiet(state: PatientState, rule: RuleName, findings: list[Finding]) -> bool:
    """Would reconciling these (incremental) findings emit nothing? True when each is an open
    episode announced and open as it stands, with the same start, severity and signature: the
    usual step, where a new result changes nothing an alert says."""
    prefix = f"{rule.value}|"
    for finding in findings:
        announced = state.alerts.get(prefix + finding.episode_key)
        if (
            announced is None
            or not finding.is_open
            or announced.status is not _OPEN
            or _changed(announced, finding)
        ):
            return False
    return True


def covers_open(state: PatientState, rule: RuleName, findings: list[Finding]) -> bool:
    """Do ``findings`` account for every open alert of ``rule``? (An incremental evaluation
    must: a scan that only appends never loses an open episode.)"""
    if not any(a.rule is rule and a.status is _OPEN for a in state.alerts.values()):
        return True
    _, unmatched = match(state.alerts, rule, findings)
    return not any(state.alerts[key].status is AlertStatus.OPEN for key in unmatched)


def forget_settled(ctx: RuleInput, rule: RuleName, findings: list[Finding]) -> None:
    """After pruning: drop the closed alerts whose episodes lie wholly before the cut.

    Their findings are no longer produced (the history is settled there), so they must not be
    mistaken for alerts whose condition never held. Open alerts are always reproduced from the
    carries and stay.
    """
    alerts = ctx.state.alerts
    _, unmatched = match(alerts, rule, findings)
    for key in unmatched:
        if alerts[key].status is not AlertStatus.OPEN:
            del alerts[key]


def order(events: Iterable[AlertEvent], rule_order: Sequence[RuleName]) -> list[AlertEvent]:
    """Retractions first; then alerts by the time of their first event, then by rule order."""
    events = list(events)
    if len(events) < 2:
        return events
    rank = {rule: index for index, rule in enumerate(rule_order)}
    retractions = [e for e in events if e.action is AlertAction.RETRACTED]
    retractions.sort(key=lambda e: (e.event_time, rank[e.rule]))
    groups: dict[str, list[AlertEvent]] = {}
    for event in events:
        if event.action is not AlertAction.RETRACTED:
            groups.setdefault(event.alert_id, []).append(event)
    for group in groups.values():
        group.sort(key=lambda e: _LIFECYCLE[e.action])
    ordered = sorted(groups.values(), key=lambda g: (g[0].event_time, rank[g[0].rule]))
    return [*retractions, *(event for group in ordered for event in group)]


def _lineage(
    alerts: dict[str, AnnouncedAlert], rule: RuleName, finding: Finding, seen: set[str]
) -> tuple[str, AnnouncedAlert] | None:
    """The standing alert whose episode this finding extends backwards, if any."""
    prefix = finding.episode_key.split("@")[0] if "@" in finding.episode_key else ""
    end = finding.resolved_at
    for key, announced in alerts.items():
        if (
            announced.rule is rule
            and key not in seen
            and announced.status is not AlertStatus.RETRACTED
            and announced.episode_start >= finding.episode_start
            and (end is None or announced.episode_start <= end)
            and announced.episode_key.startswith(prefix)
        ):
            return key, announced
    return None


def _announce(
    ctx: RuleInput,
    key: str,
    finding: Finding,
    previous: AnnouncedAlert | None,
    fingerprint: str,
) -> AnnouncedAlert:
    identity = (
        previous.alert_id
        if previous is not None
        else alert_id(ctx.state.patient_id, finding.rule, finding.episode_key, fingerprint)
    )
    announced = AnnouncedAlert(
        rule=finding.rule,
        episode_key=finding.episode_key,
        episode_start=finding.episode_start,
        severity=finding.severity,
        status=AlertStatus.OPEN,
        signature=finding.signature,
        seq=0 if previous is None else previous.seq + 1,
        alert_id=identity,
    )
    ctx.state.alerts[key] = announced
    return announced


def _changed(announced: AnnouncedAlert, finding: Finding) -> bool:
    return (
        announced.signature != finding.signature
        or announced.severity is not finding.severity
        or announced.episode_start != finding.episode_start
    )


def _update(ctx: RuleInput, announced: AnnouncedAlert, finding: Finding, step: Step) -> AlertEvent:
    announced.signature = finding.signature
    announced.severity = finding.severity
    announced.episode_start = finding.episode_start
    announced.seq += 1
    return _event_of(ctx, announced, finding, AlertAction.UPDATED, step.at, step)


def _close(ctx: RuleInput, announced: AnnouncedAlert, finding: Finding, step: Step) -> AlertEvent:
    assert finding.resolved_at is not None
    announced.status = AlertStatus.RESOLVED
    announced.signature = finding.signature
    announced.seq += 1
    return _event_of(ctx, announced, finding, AlertAction.RESOLVED, finding.resolved_at, step)


def _retraction(ctx: RuleInput, announced: AnnouncedAlert, step: Step) -> AlertEvent:
    announced.status = AlertStatus.RETRACTED
    announced.seq += 1
    change = step.change() if step.change else "a result was corrected, cancelled or added late"
    texts = Texts(
        summary=(
            f"{announced.rule.value} alert retracted: {change}; on the lab history as now known "
            "its condition never held."
        ),
        recommendation="Disregard the earlier alert; the evidence shows the result that changed.",
        threshold=f"{announced.rule.value} thresholds of policy {ctx.policy.version_tag}: no "
        "longer met by any result on the current history",
    )
    evidence = (step.trigger,) if step.trigger is not None else ()
    return _event(
        ctx, announced, AlertAction.RETRACTED, step.at, step.decided_at, texts, evidence, (), ()
    )


def _event_of(
    ctx: RuleInput,
    announced: AnnouncedAlert,
    finding: Finding,
    action: AlertAction,
    at: datetime,
    step: Step,
) -> AlertEvent:
    return _event(
        ctx,
        announced,
        action,
        at,
        step.decided_at,
        finding.texts(),
        finding.evidence,
        (*finding.context, *_preliminary_context(ctx, finding)),
        finding.references,
    )


def _preliminary_context(ctx: RuleInput, finding: Finding) -> tuple[Cite, ...]:
    """Preliminary results of the episode's analytes: shown, never built on (clinical rules 0)."""
    if ctx.policy.alert_on_preliminary:
        return ()
    analytes = {c.analyte for c in finding.evidence}
    return tuple(
        Cite(analyte, result, "preliminary result: context only, no rule builds on it")
        for analyte in sorted(analytes)
        for result in ctx.state.results.get(analyte, ())
        if result.status is ResultStatus.PRELIMINARY
        and result.collected_at >= finding.episode_start
    )


def _event(
    ctx: RuleInput,
    announced: AnnouncedAlert,
    action: AlertAction,
    event_time: datetime,
    decided_at: datetime,
    texts: Texts,
    evidence: tuple[Cite, ...],
    context: tuple[object, ...],
    references: tuple[str, ...],
) -> AlertEvent:
    return AlertEvent.model_construct(
        alert_id=announced.alert_id,
        event_id=f"{announced.alert_id}:{announced.seq}",
        patient_id=ctx.state.patient_id,
        rule=announced.rule,
        severity=announced.severity,
        action=action,
        event_time=event_time,
        decided_at=decided_at,
        policy_version=ctx.policy.version_tag,
        episode_start=announced.episode_start,
        day=ctx.day(event_time),
        summary=texts.summary,
        recommendation=texts.recommendation,
        threshold=texts.threshold,
        evidence=tuple(ctx.evidence(c) for c in evidence),
        context=tuple(ctx.context_item(c) for c in context),  # type: ignore[arg-type]
        references=references,
    )
