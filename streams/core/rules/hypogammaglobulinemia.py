"""Hypogammaglobulinemia (``hypogammaglobulinemia``).

Source: Westhafen 2025, "Hypogammaglobulinemia and risk of infections". IgG below
``Policy.igg_threshold_mg_dl`` (default 400 mg/dL = 4.0 g/L; exactly 400 does not alert) → warning,
before and after day 0. One alert per episode (a run of low IgG results); resolved by the next IgG at
or above the threshold. An ``ivig_given`` event is context: an IgG measured after a dose reflects the
infusion, so the alert states the days since the last dose before the latest IgG.
"""

from dataclasses import dataclass

from schemas.vocab import Analyte, ClinicalEventKind, RuleName, Severity
from streams.core.rules.base import (
    REVIEW,
    Cite,
    EveryResultMatters,
    Finding,
    RuleInput,
    Texts,
    episode_key,
)
from streams.core.state import StoredResult

REFERENCES = (f"{REVIEW} -- section 'Hypogammaglobulinemia and risk of infections'",)
RECOMMENDATION = (
    "Consider immunoglobulin replacement (the threshold most institutions use); higher IgG "
    "targets may be needed with recurrent infections. Common practice: IgG before infusion, "
    "then monthly."
)


@dataclass(frozen=True)
class HypogammaglobulinemiaRule(EveryResultMatters):
    name: RuleName = RuleName.HYPOGAMMAGLOBULINEMIA
    analytes: frozenset[Analyte] = frozenset({Analyte.IGG})
    events: frozenset[str] = frozenset({ClinicalEventKind.IVIG_GIVEN.value})
    depends_on: frozenset[RuleName] = frozenset()

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        threshold = ctx.policy.igg_threshold_mg_dl
        findings: list[Finding] = []
        episode: list[StoredResult] = []
        for result in ctx.results(Analyte.IGG):
            if result.value is None:
                continue
            if result.value < threshold:
                episode.append(result)
            elif episode:
                findings.append(_finding(ctx, episode, result))
                episode = []
        if episode:
            findings.append(_finding(ctx, episode, None))
        return findings


def _finding(ctx: RuleInput, low: list[StoredResult], recovery: StoredResult | None) -> Finding:
    first, latest = low[0], low[-1]
    lowest = min(low, key=lambda r: r.value or 0.0)
    cites = [Cite(Analyte.IGG, first, "first IgG below threshold")]
    if lowest is not first:
        cites.append(Cite(Analyte.IGG, lowest, "lowest IgG of the episode"))
    if latest is not first and latest is not lowest:
        cites.append(Cite(Analyte.IGG, latest, "latest IgG of the episode"))
    if recovery is not None:
        cites.append(Cite(Analyte.IGG, recovery, "IgG back at or above threshold"))
    threshold = ctx.policy.igg_threshold_mg_dl

    def texts() -> Texts:
        summary = (
            f"IgG {latest.value:g} mg/dL on day {ctx.day_of(latest)} is below "
            f"{threshold:g} mg/dL (low since day {ctx.day_of(first)}, "
            f"first value {first.value:g} mg/dL). {_ivig_context(ctx, latest)}"
        )
        if recovery is not None:
            summary += f" Resolved: IgG {recovery.value:g} mg/dL on day {ctx.day_of(recovery)}."
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=f"IgG < {threshold:g} mg/dL ({threshold / 100:g} g/L); "
            "policy igg_threshold_mg_dl",
        )

    return Finding(
        rule=RuleName.HYPOGAMMAGLOBULINEMIA,
        episode_key=episode_key(first.collected_at),
        episode_start=first.collected_at,
        severity=Severity.WARNING,
        raised_at=first.collected_at,
        resolved_at=None if recovery is None else recovery.collected_at,
        signature="low",
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
    )


def _ivig_context(ctx: RuleInput, igg: StoredResult) -> str:
    doses = [
        e.at
        for e in ctx.events()
        if e.kind is ClinicalEventKind.IVIG_GIVEN and e.at <= igg.collected_at
    ]
    if not doses:
        return "No immunoglobulin (IVIG) dose recorded before this IgG."
    days = (igg.collected_at - doses[-1]).total_seconds() / 86400
    return (
        f"Last IVIG dose {days:.0f} days before this IgG (day {ctx.day(doses[-1])}): "
        "the value reflects the infusion."
    )


RULE = HypogammaglobulinemiaRule()
