"""Hypogammaglobulinemia (``hypogammaglobulinemia``) -- docs/clinical-spec.md section 2.

Source: Westhafen 2025, "Hypogammaglobulinemia and risk of infections": most institutions use IgG
below 400 mg/dL as the threshold for supplementation; higher levels may be needed with recurrent
infections.

Policy: ``igg_threshold_mg_dl`` (400; exactly 400 does not alert), ``ivig_effect_days`` (28).

- IgG below the threshold → warning, before and after day 0. Two IgG values of one specimen
  are one observation, read as the lower (decision: the conservative reading). One alert per episode (a run of low
  IgG results); resolved by the next IgG at or above the threshold. A censored ``< 140 mg/dL``
  counts with its limit.
- ``ivig_given`` is context, never a trigger: an IgG measured within 28 days after a dose
  (difference of day numbers) reflects the infusion, so the alert -- and a resolution by such an
  IgG -- states the days since that dose; an older dose is not offered as an explanation.
- ``end_of_follow_up`` resolves an open alert; ``relapse`` and ``hct_performed`` do not (IgG
  monitoring goes on).
"""

from dataclasses import dataclass
from datetime import datetime

from schemas.vocab import Analyte, ClinicalEventKind, RuleName, Severity
from streams.core.rules.base import (
    END_OF_FOLLOW_UP,
    REVIEW,
    Cite,
    Course,
    Finding,
    Item,
    Reads,
    RuleInput,
    ScanRule,
    Texts,
    course_sentence,
    episode_key,
)
from streams.core.state import ClinicalEventRecord, StoredResult
from streams.core.text import labelled, quantity

REFERENCES = (
    f"{REVIEW} -- section 'Hypogammaglobulinemia and risk of infections': \"Most institutions "
    "use immunoglobulin G (IgG) levels below 400 mg/dL as the threshold for supplementation, "
    'higher levels may be needed for those with recurrent infections"',
)
RECOMMENDATION = (
    "Consider immunoglobulin replacement (the threshold most institutions use); higher IgG "
    "targets may be needed with recurrent infections. Common practice: IgG before infusion, "
    "then monthly."
)


@dataclass
class LowIgg:
    """One IgG taken with the last IVIG dose before it (None if none was recorded)."""

    result: StoredResult
    dose_before: datetime | None


@dataclass
class HypogammaAcc:
    first: LowIgg | None = None
    lowest: LowIgg | None = None
    latest: LowIgg | None = None
    last_dose: datetime | None = None
    stopped: ClinicalEventRecord | None = None


class HypogammaglobulinemiaRule(ScanRule[HypogammaAcc]):
    name = RuleName.HYPOGAMMAGLOBULINEMIA
    reads = Reads(
        analytes=frozenset({Analyte.IGG}),
        events=frozenset({ClinicalEventKind.IVIG_GIVEN, END_OF_FOLLOW_UP}),
        settings=("igg_threshold_mg_dl", "ivig_effect_days"),
    )
    acc_type = HypogammaAcc

    def start(self, ctx: RuleInput) -> HypogammaAcc:
        return HypogammaAcc()

    def feed(self, ctx: RuleInput, acc: HypogammaAcc, item: Item, out: list[Finding]) -> None:
        if acc.stopped is not None:
            return
        if isinstance(item, Course):
            if item.kind is ClinicalEventKind.IVIG_GIVEN:
                acc.last_dose = item.at
            elif item.kind is END_OF_FOLLOW_UP:
                if acc.first is not None:
                    out.append(_finding(ctx, acc, None, item.event))
                acc.first = acc.lowest = acc.latest = None
                acc.stopped = item.event
            return
        result = item.lowest(Analyte.IGG)
        if result is None or result.value is None:
            return
        igg = LowIgg(result, acc.last_dose)
        if result.value < ctx.policy.igg_threshold_mg_dl:
            if acc.first is None:
                acc.first = igg
            if acc.lowest is None or result.value < (acc.lowest.result.value or 0.0):
                acc.lowest = igg
            acc.latest = igg
        elif acc.first is not None:
            out.append(_finding(ctx, acc, igg, None))
            acc.first = acc.lowest = acc.latest = None

    def open_findings(self, ctx: RuleInput, acc: HypogammaAcc) -> list[Finding]:
        return [] if acc.first is None else [_finding(ctx, acc, None, None)]


def _finding(
    ctx: RuleInput,
    acc: HypogammaAcc,
    recovery: LowIgg | None,
    ended: ClinicalEventRecord | None,
) -> Finding:
    first, lowest, latest = acc.first, acc.lowest, acc.latest
    assert first is not None and lowest is not None and latest is not None
    cites = [Cite(Analyte.IGG, first.result, "first IgG below threshold")]
    if lowest.result != first.result:
        cites.append(Cite(Analyte.IGG, lowest.result, "lowest IgG of the episode"))
    if latest.result not in (first.result, lowest.result):
        cites.append(Cite(Analyte.IGG, latest.result, "latest IgG of the episode"))
    if recovery is not None:
        cites.append(Cite(Analyte.IGG, recovery.result, "IgG back at or above threshold"))
    threshold = ctx.policy.igg_threshold_mg_dl
    resolved_at = (
        recovery.result.collected_at
        if recovery is not None
        else (ended.at if ended is not None else None)
    )

    def texts() -> Texts:
        summary = (
            f"{labelled(Analyte.IGG, latest.result)} on day {ctx.day_of(latest.result)} is below "
            f"{threshold:g} mg/dL (low since day {ctx.day_of(first.result)}, first value "
            f"{quantity(Analyte.IGG, first.result)}). {_ivig_context(ctx, latest, 'this IgG')}"
        )
        if recovery is not None:
            summary += (
                f" Resolved: {labelled(Analyte.IGG, recovery.result)} on day "
                f"{ctx.day_of(recovery.result)}."
            )
            dose = _dose_effect(ctx, recovery)
            if dose is not None:
                summary += f" {dose}"
        elif ended is not None:
            summary += f" Resolved: {course_sentence(ctx, ended)}."
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=f"IgG < {threshold:g} mg/dL ({threshold / 100:g} g/L); policy "
            f"igg_threshold_mg_dl; an IgG within {ctx.policy.ivig_effect_days} days after an "
            "IVIG dose reflects the infusion (ivig_effect_days)",
        )

    return Finding(
        rule=RuleName.HYPOGAMMAGLOBULINEMIA,
        episode_key=episode_key(first.result.collected_at),
        episode_start=first.result.collected_at,
        severity=Severity.WARNING,
        raised_at=first.result.collected_at,
        resolved_at=resolved_at,
        signature="low",
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
    )


def _dose_effect(ctx: RuleInput, igg: LowIgg) -> str | None:
    """The IVIG dose this IgG reflects, if one was given within ``ivig_effect_days`` before."""
    if igg.dose_before is None:
        return None
    days = ctx.day_of(igg.result) - ctx.day(igg.dose_before)
    if days > ctx.policy.ivig_effect_days:
        return None
    return (
        f"Last IVIG dose {days} days before this IgG (day {ctx.day(igg.dose_before)}): the "
        "value reflects the infusion."
    )


def _ivig_context(ctx: RuleInput, igg: LowIgg, what: str) -> str:
    effect = _dose_effect(ctx, igg)
    if effect is not None:
        return effect
    if igg.dose_before is None:
        return f"No immunoglobulin (IVIG) dose recorded before {what}."
    return (
        f"No IVIG dose in the {ctx.policy.ivig_effect_days} days before {what} (last dose day "
        f"{ctx.day(igg.dose_before)})."
    )


RULE = HypogammaglobulinemiaRule()
