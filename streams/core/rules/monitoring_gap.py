"""Monitoring gap (``monitoring_gap``): silence is how a loss of B-cell aplasia goes unnoticed.

Source: clinical-rules.md section 7 (beyond the review's four asked-for alerts). Only ``tick(now)``
moves the clock; between ticks the last ``now`` seen (``PatientState.clock``) is the clock.

Three separate kinds of episode, each info, each resolved when the missing result arrives:
- ``cd19``: no CD19 result (% or absolute) for more than 35 days while the gap's anchor -- the
  later of day 0 and the last CD19 result -- is in the first year (day ≤ 365), 90 days after;
- ``igg``: likewise for IgG, 60 days in the first year, 90 after;
- ``anc``: an open neutropenia episode (``prolonged_neutropenia``) with no ANC for more than 7 days.

A gap is only reported when it was open at the clock; a gap that closed before any tick saw it is
history, not an alert. An announced gap that a late result shows never lasted past its limit is
retracted like any other alert.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.vocab import Analyte, RuleName, Severity
from streams.core.rules.base import Cite, EveryResultMatters, Finding, RuleInput, Texts, episode_key
from streams.core.rules.prolonged_neutropenia import neutropenia_episodes
from streams.core.state import StoredResult

REFERENCES = (
    "CAR-T Watch clinical rules, section 7 (monitoring gap); Westhafen 2025: loss of B-cell "
    "aplasia is detected only by regular CD19 monitoring",
)
KIND_ANALYTES = {
    "cd19": (Analyte.CD19_PCT, Analyte.CD19_ABS),
    "igg": (Analyte.IGG,),
    "anc": (Analyte.ANC,),
}
WHAT = {"cd19": "CD19 (B-cell) result", "igg": "IgG result", "anc": "ANC during open neutropenia"}


@dataclass(frozen=True)
class MonitoringGapRule(EveryResultMatters):
    name: RuleName = RuleName.MONITORING_GAP
    analytes: frozenset[Analyte] = frozenset(
        {Analyte.CD19_PCT, Analyte.CD19_ABS, Analyte.IGG, Analyte.ANC}
    )
    events: frozenset[str] = frozenset()
    depends_on: frozenset[RuleName] = frozenset()

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        if ctx.clock is None:
            return []
        announced = {
            a.episode_key for a in ctx.state.alerts.values() if a.rule is RuleName.MONITORING_GAP
        }
        findings: list[Finding] = []
        for kind in ("cd19", "igg"):
            findings += _gaps(ctx, kind, _anchors(ctx, kind), announced)
        findings += _gaps(ctx, "anc", _neutropenia_anchors(ctx), announced)
        return findings


Anchor = tuple[datetime, StoredResult | None, Analyte | None, datetime | None]
# (anchor time, anchoring result or None for day 0, its analyte, next result time or None)


def _results(ctx: RuleInput, kind: str) -> list[tuple[Analyte, StoredResult]]:
    merged = [(a, r) for a in KIND_ANALYTES[kind] for r in ctx.results(a)]
    return sorted(merged, key=lambda item: item[1].collected_at)


def _anchors(ctx: RuleInput, kind: str) -> list[Anchor]:
    day0 = ctx.day0
    results = [(a, r) for a, r in _results(ctx, kind) if r.collected_at >= day0]
    anchors: list[Anchor] = []
    previous: tuple[datetime, StoredResult | None, Analyte | None] = (day0, None, None)
    for analyte, result in results:
        if result.collected_at > previous[0]:
            anchors.append((*previous, result.collected_at))
        previous = (result.collected_at, result, analyte)
    anchors.append((*previous, None))
    return anchors


def _neutropenia_anchors(ctx: RuleInput) -> list[Anchor]:
    anchors: list[Anchor] = []
    for episode in neutropenia_episodes(ctx):
        results = [r for _, r in episode.results]
        for result, following in zip(results, [*results[1:], None], strict=True):
            if result is episode.recovery_result:
                break
            nxt = None if following is None else following.collected_at
            anchors.append((result.collected_at, result, Analyte.ANC, nxt))
    return anchors


def _limit_days(ctx: RuleInput, kind: str, anchor: datetime) -> int:
    p = ctx.policy
    if kind == "anc":
        return p.anc_gap_days_open_neutropenia
    first_year = ctx.day(anchor) <= p.first_year_last_day
    if kind == "cd19":
        return p.cd19_gap_days_first_year if first_year else p.cd19_gap_days_after
    return p.igg_gap_days_first_year if first_year else p.igg_gap_days_after


def _gaps(
    ctx: RuleInput, kind: str, anchors: Iterable[Anchor], announced: set[str]
) -> list[Finding]:
    assert ctx.clock is not None
    findings = []
    for at, result, analyte, next_at in anchors:
        limit = timedelta(days=_limit_days(ctx, kind, at))
        key = episode_key(at, f"{kind}@")
        if next_at is None:
            if ctx.clock - at > limit:
                findings.append(_finding(ctx, kind, key, at, result, analyte, limit, None))
        elif key in announced and next_at - at > limit:
            findings.append(_finding(ctx, kind, key, at, result, analyte, limit, next_at))
    return findings


def _finding(
    ctx: RuleInput,
    kind: str,
    key: str,
    anchor: datetime,
    result: StoredResult | None,
    analyte: Analyte | None,
    limit: timedelta,
    resolved_at: datetime | None,
) -> Finding:
    overdue = anchor + limit
    evidence = () if result is None or analyte is None else (Cite(analyte, result, "last result"),)
    since = "day 0 (infusion)" if result is None else f"day {ctx.day(anchor)}"

    def texts() -> Texts:
        summary = f"No {WHAT[kind]} for more than {limit.days} days since {since}."
        if resolved_at is not None:
            summary += f" Resolved: a new result was collected on day {ctx.day(resolved_at)}."
        return Texts(
            summary=summary,
            recommendation=f"Order the missing test ({WHAT[kind]}); check the patient is still "
            "followed here.",
            threshold="CD19 every 35 days (first year, 90 after), IgG every 60 days (first year, "
            "90 after), ANC every 7 days during an open neutropenia episode",
        )

    return Finding(
        rule=RuleName.MONITORING_GAP,
        episode_key=key,
        episode_start=anchor,
        severity=Severity.INFO,
        raised_at=overdue,
        resolved_at=resolved_at,
        signature=kind,
        texts=texts,
        evidence=evidence,
        references=REFERENCES,
    )


RULE = MonitoringGapRule()
