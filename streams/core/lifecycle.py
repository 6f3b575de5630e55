"""Alert lifecycle: compare a rule's findings with what was announced, emit the difference.

Per (patient, rule, episode): ``raised`` → ``updated`` (escalation or new evidence) → ``resolved``
(condition cleared) or ``retracted`` (on the history as now known it never held). A resolved alert
whose resolving result is corrected away re-opens with ``updated`` under the same id; a late result
that reveals an episode already over yields ``raised`` then ``resolved`` (clinical-rules.md 0).

``alert_id`` = hash(patient id, rule, episode, policy version): the same input always gives the
same ids, so restarts, duplicates and replays never create a second alert for one episode.

Episode identity follows the episode, not its first result: when a late result moves an open
episode's start earlier (the condition held all along), the finding keeps the alert it was
announced under -- ``updated`` with the new start and evidence, never ``retracted`` + ``raised``
again ("a condition that stays true never raises twice"). An announced alert belongs to the
finding whose episode covers the announced start.

Bounded history: before ``horizon`` (where pruning cut the rule's analytes) the history is
settled. A closed alert that started before it and is no longer found is forgotten, not retracted
(its condition did hold; its results aged out), and a closed episode starting at the cut is not
announced (it may be the tail of one that was).
"""

import hashlib
from datetime import datetime

from schemas.alert import AlertEvent
from schemas.vocab import AlertAction, ResultStatus, RuleName
from streams.core.rules.base import Cite, Finding, RuleInput, Texts
from streams.core.state import AlertStatus, AnnouncedAlert


def alert_id(patient_id: str, rule: RuleName, episode: str, policy_version: str) -> str:
    material = "\x1f".join((patient_id, rule.value, episode, policy_version))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def reconcile(
    ctx: RuleInput,
    rule: RuleName,
    findings: list[Finding],
    trigger_time: datetime,
    decided_at: datetime,
    trigger: Cite | None,
    horizon: datetime | None = None,
) -> list[AlertEvent]:
    """Events that bring subscribers from the announced alerts to ``findings`` of one rule."""
    alerts = ctx.state.alerts
    events: list[AlertEvent] = []
    seen: set[str] = {
        f"{rule.value}|{f.episode_key}"
        for f in findings
        if f"{rule.value}|{f.episode_key}" in alerts
    }
    for finding in findings:
        key = f"{rule.value}|{finding.episode_key}"
        announced = alerts.get(key)
        if announced is None or announced.status is AlertStatus.RETRACTED:
            key, announced = _lineage(alerts, rule, finding, seen) or (key, announced)
        seen.add(key)
        settled = horizon is not None and finding.episode_start <= horizon
        if announced is None and settled and not finding.is_open:
            continue
        if announced is None or announced.status is AlertStatus.RETRACTED:
            announced = _announce(ctx, key, finding, announced)
            events.append(
                _from_finding(
                    ctx, announced, finding, AlertAction.RAISED, finding.raised_at, decided_at
                )
            )
            if not finding.is_open:
                events.append(_close(ctx, announced, finding, decided_at))
        elif announced.status is AlertStatus.OPEN:
            if _changed(announced, finding):
                events.append(_update(ctx, announced, finding, trigger_time, decided_at))
            if not finding.is_open:
                events.append(_close(ctx, announced, finding, decided_at))
        elif finding.is_open:  # resolved, and the resolving result is gone: re-open
            announced.status = AlertStatus.OPEN
            events.append(_update(ctx, announced, finding, trigger_time, decided_at))
    forgotten = []
    for key, announced in alerts.items():
        if announced.rule is not rule or key in seen:
            continue
        aged_out = horizon is not None and announced.episode_start < horizon
        if aged_out and announced.status is not AlertStatus.OPEN:
            forgotten.append(key)
        elif announced.status is not AlertStatus.RETRACTED:
            events.append(_retraction(ctx, announced, trigger_time, decided_at, trigger))
    for key in forgotten:
        del alerts[key]
    return events


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
    ctx: RuleInput, key: str, finding: Finding, previous: AnnouncedAlert | None
) -> AnnouncedAlert:
    announced = AnnouncedAlert(
        rule=finding.rule,
        episode_key=finding.episode_key,
        episode_start=finding.episode_start,
        severity=finding.severity,
        status=AlertStatus.OPEN,
        signature=finding.signature,
        seq=0 if previous is None else previous.seq + 1,
    )
    ctx.state.alerts[key] = announced
    return announced


def _changed(announced: AnnouncedAlert, finding: Finding) -> bool:
    return (
        announced.signature != finding.signature
        or announced.severity is not finding.severity
        or announced.episode_start != finding.episode_start
    )


def _update(
    ctx: RuleInput, announced: AnnouncedAlert, finding: Finding, at: datetime, decided_at: datetime
) -> AlertEvent:
    announced.signature = finding.signature
    announced.severity = finding.severity
    announced.episode_start = finding.episode_start
    announced.seq += 1
    return _from_finding(ctx, announced, finding, AlertAction.UPDATED, at, decided_at)


def _close(
    ctx: RuleInput, announced: AnnouncedAlert, finding: Finding, decided_at: datetime
) -> AlertEvent:
    assert finding.resolved_at is not None
    announced.status = AlertStatus.RESOLVED
    announced.signature = finding.signature
    announced.seq += 1
    return _from_finding(
        ctx, announced, finding, AlertAction.RESOLVED, finding.resolved_at, decided_at
    )


def _retraction(
    ctx: RuleInput,
    announced: AnnouncedAlert,
    at: datetime,
    decided_at: datetime,
    trigger: Cite | None,
) -> AlertEvent:
    announced.status = AlertStatus.RETRACTED
    announced.seq += 1
    texts = Texts(
        summary=(
            f"{announced.rule.value} alert retracted: on the lab history as now known (a result "
            "corrected, cancelled or added late) its condition never held."
        ),
        recommendation="Disregard the earlier alert; the evidence shows the result that changed.",
        threshold=f"{announced.rule.value} thresholds of policy {ctx.policy.version_tag}: no "
        "longer met by any result on the current history",
    )
    evidence = (trigger,) if trigger is not None else ()
    return _event(ctx, announced, AlertAction.RETRACTED, at, decided_at, texts, evidence, (), ())


def _from_finding(
    ctx: RuleInput,
    announced: AnnouncedAlert,
    finding: Finding,
    action: AlertAction,
    at: datetime,
    decided_at: datetime,
) -> AlertEvent:
    return _event(
        ctx,
        announced,
        action,
        at,
        decided_at,
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
    context: tuple[Cite, ...],
    references: tuple[str, ...],
) -> AlertEvent:
    identity = alert_id(
        ctx.state.patient_id, announced.rule, announced.episode_key, ctx.policy.version_tag
    )
    return AlertEvent.model_construct(
        alert_id=identity,
        event_id=f"{identity}:{announced.seq}",
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
        context=tuple(ctx.evidence(c) for c in context),
        references=references,
    )
