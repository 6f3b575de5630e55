"""Monitoring gap (``monitoring_gap``) -- docs/clinical-spec.md section 7.

Silence is the most common way a loss of B-cell aplasia goes unnoticed. Only ``tick(now)`` raises
gaps: the wall clock is not history, so each gap a tick sees is recorded in the state
(``GapRecord``) and is one episode however many ticks see it (rev. 2).

Three kinds of gap, each info:
- ``cd19``: no CD19 result (% or absolute) for more than 35 days -- a difference of day numbers --
  counted from the later of day 0 and the last CD19 result, while that anchor is in the first
  year (day ≤ 365), 90 days after;
- ``igg``: likewise for IgG, 60 days in the first year, 90 after;
- ``anc``: an open neutropenia episode (``prolonged_neutropenia``'s accumulator) with no ANC for
  more than 7 days.

A gap resolves only when the missing analyte arrives: a result of that kind collected after the
anchor, late or not. A result of another analyte never touches it. The gap is raised at the start
of the first day past its limit (its ``event_time``). Decisions: ``end_of_follow_up`` resolves
every gap and stops the rule; ``hct_performed`` and ``relapse`` do so for CD19 gaps only (B-cell
monitoring of the CAR T-cells is over; IgG and ANC monitoring go on).
"""

from datetime import datetime
from typing import Any

from schemas.vocab import Analyte, RuleName, Severity
from streams.core.rules.base import (
    END_OF_FOLLOW_UP,
    HCT_PERFORMED,
    RELAPSE,
    Cite,
    Evaluation,
    Finding,
    Reads,
    RuleInput,
    Texts,
    course_sentence,
    episode_key,
)
from streams.core.state import ClinicalEventRecord, GapRecord, StoredResult

REFERENCES = (
    "CAR-T Watch clinical spec (docs/clinical-spec.md), section 7 'Monitoring gap': a product "
    "rule beyond the review",
    "Westhafen 2025, section 'Relapsed/Refractory Disease', risk factor 3: \"Loss of BCA implies "
    "the absence of functional CAR T-cells, and if it occurs within 6 months post-infusion, it is "
    'associated with a high risk of CD19-positive relapse."',
)
KIND_ANALYTES = {
    "cd19": (Analyte.CD19_PCT, Analyte.CD19_ABS),
    "igg": (Analyte.IGG,),
    "anc": (Analyte.ANC,),
}
WHAT = {"cd19": "CD19 (B-cell) result", "igg": "IgG result", "anc": "ANC during open neutropenia"}
STOPS = {
    "cd19": frozenset({HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP}),
    "igg": frozenset({END_OF_FOLLOW_UP}),
    "anc": frozenset({END_OF_FOLLOW_UP}),
}


class MonitoringGapRule:
    name = RuleName.MONITORING_GAP
    reads = Reads(
        analytes=frozenset({Analyte.CD19_PCT, Analyte.CD19_ABS, Analyte.IGG, Analyte.ANC}),
        events=frozenset({HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP}),
        tick=True,
        settings=(
            "first_year_last_day",
            "cd19_gap_days_first_year",
            "cd19_gap_days_after",
            "igg_gap_days_first_year",
            "igg_gap_days_after",
            "anc_gap_days_open_neutropenia",
        ),
        depends_on=(RuleName.PROLONGED_NEUTROPENIA,),
    )

    def evaluate(self, ctx: RuleInput) -> Evaluation:
        return Evaluation([_finding(ctx, gap, *_resolution(ctx, gap)) for gap in ctx.state.gaps])

    def carry(self, ctx: RuleInput, cut: datetime) -> Any:
        """Nothing to fold: gaps live in ``PatientState.gaps``. Gaps closed before the cut go."""
        ctx.state.gaps = [gap for gap in ctx.state.gaps if (_resolution(ctx, gap)[0] or cut) >= cut]
        return None

    def observe(self, ctx: RuleInput, now: datetime) -> bool:
        """Record the gaps open at ``now`` that no record covers yet; True if any was added."""
        added = False
        for kind in ("cd19", "igg", "anc"):
            if _stopped(ctx, kind, now) is not None or _open(ctx, kind):
                continue
            anchor = _anchor(ctx, kind)
            if anchor is None:
                continue
            at, last, analyte = anchor
            limit = _limit_days(ctx, kind, at)
            if ctx.day(now) - ctx.day(at) <= limit:
                continue
            if any(g.kind == kind and g.anchor == at for g in ctx.state.gaps):
                continue
            overdue = ctx.start_of_day(ctx.day(at) + limit + 1)
            ctx.state.gaps.append(GapRecord(kind, at, overdue, last, analyte))
            added = True
        return added


def _results(ctx: RuleInput, kind: str) -> list[tuple[Analyte, StoredResult]]:
    merged = [(a, r) for a in KIND_ANALYTES[kind] for r in ctx.results(a)]
    return sorted(merged, key=lambda item: item[1].collected_at)


def _stopped(
    ctx: RuleInput, kind: str, before: datetime | None = None
) -> ClinicalEventRecord | None:
    for event in ctx.events():
        if event.kind in STOPS[kind] and (before is None or event.at <= before):
            return event
    return None


def _resolution(
    ctx: RuleInput, gap: GapRecord
) -> tuple[datetime | None, StoredResult | None, Analyte | None, ClinicalEventRecord | None]:
    """When the gap ended: the first result of its kind after the anchor, or a stopping event."""
    arrived = next(
        ((a, r) for a, r in _results(ctx, gap.kind) if r.collected_at > gap.anchor), None
    )
    stop = _stopped(ctx, gap.kind)
    stop = stop if stop is not None and stop.at >= gap.anchor else None
    if arrived is not None and (stop is None or arrived[1].collected_at <= stop.at):
        return arrived[1].collected_at, arrived[1], arrived[0], None
    if stop is not None:
        return stop.at, None, None, stop
    return None, None, None, None


def _open(ctx: RuleInput, kind: str) -> bool:
    return any(g.kind == kind and _resolution(ctx, g)[0] is None for g in ctx.state.gaps)


def _anchor(
    ctx: RuleInput, kind: str
) -> tuple[datetime, StoredResult | None, Analyte | None] | None:
    if kind == "anc":
        icaht = ctx.evaluation(RuleName.PROLONGED_NEUTROPENIA).acc
        if icaht.episode is None or icaht.previous is None:
            return None
        return icaht.previous.collected_at, icaht.previous, Analyte.ANC
    results = _results(ctx, kind)
    if results and results[-1][1].collected_at >= ctx.day0:
        analyte, last = results[-1]
        return last.collected_at, last, analyte
    return ctx.day0, None, None


def _limit_days(ctx: RuleInput, kind: str, anchor: datetime) -> int:
    p = ctx.policy
    if kind == "anc":
        return p.anc_gap_days_open_neutropenia
    first_year = ctx.day(anchor) <= p.first_year_last_day
    if kind == "cd19":
        return p.cd19_gap_days_first_year if first_year else p.cd19_gap_days_after
    return p.igg_gap_days_first_year if first_year else p.igg_gap_days_after


def _finding(
    ctx: RuleInput,
    gap: GapRecord,
    resolved_at: datetime | None,
    arrived: StoredResult | None,
    arrived_analyte: Analyte | None,
    stopped: ClinicalEventRecord | None,
) -> Finding:
    limit = _limit_days(ctx, gap.kind, gap.anchor)
    evidence: list[Cite] = []
    if gap.last is not None and gap.last_analyte is not None:
        evidence.append(Cite(gap.last_analyte, gap.last, "last result before the gap"))
    if arrived is not None and arrived_analyte is not None:
        evidence.append(Cite(arrived_analyte, arrived, "the missing result arrived"))
    since = "day 0 (infusion)" if gap.last is None else f"day {ctx.day(gap.anchor)}"

    def texts() -> Texts:
        summary = f"No {WHAT[gap.kind]} for more than {limit} days since {since}."
        if arrived is not None:
            summary += f" Resolved: a new result was collected on day {ctx.day_of(arrived)}."
        elif stopped is not None:
            summary += f" Resolved: {course_sentence(ctx, stopped)}."
        return Texts(
            summary=summary,
            recommendation=f"Order the missing test ({WHAT[gap.kind]}); check the patient is "
            "still followed here.",
            threshold=(
                f"CD19 at least every {ctx.policy.cd19_gap_days_first_year} days (first year, "
                f"{ctx.policy.cd19_gap_days_after} after), IgG every "
                f"{ctx.policy.igg_gap_days_first_year} days (first year, "
                f"{ctx.policy.igg_gap_days_after} after), ANC every "
                f"{ctx.policy.anc_gap_days_open_neutropenia} days during an open neutropenia "
                "episode; intervals are differences of day numbers"
            ),
        )

    return Finding(
        rule=RuleName.MONITORING_GAP,
        episode_key=episode_key(gap.anchor, f"{gap.kind}@"),
        episode_start=gap.anchor,
        severity=Severity.INFO,
        raised_at=gap.overdue_at,
        resolved_at=resolved_at,
        signature=gap.kind,
        texts=texts,
        evidence=tuple(evidence),
        references=REFERENCES,
    )


RULE = MonitoringGapRule()
