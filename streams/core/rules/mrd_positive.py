"""MRD positivity (``mrd_positive``).

Source: Westhafen 2025, "HCT for all vs. selective use", Figure 2. Any detected MRD collected after
day 0 (day ≥ 1), by flow cytometry, qPCR or NGS, at any level -- including "detected, below the
limit of quantification" -- → critical. A rising quantified level is new evidence (``updated``), not
a new alert. Resolved by a later result with MRD not detected. "Not detected" is never read as 0:
the ``detected`` flag decides, the value is only the level.
"""

from dataclasses import dataclass

from schemas.vocab import Analyte, RuleName, Severity
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

REFERENCES = (
    f"{REVIEW} -- section 'HCT for all vs. selective use', Figure 2",
    "Any detected marrow NGS-MRD after CAR T strongly predicts relapse (Westhafen 2025)",
)
RECOMMENDATION = (
    "In HCT-eligible patients without prior HCT there is reasonable evidence to recommend "
    "consolidative HCT; confirm the CD19 status of the clone (CD19-negative escape)."
)


@dataclass(frozen=True)
class MrdPositiveRule(EveryResultMatters):
    name: RuleName = RuleName.MRD_POSITIVE
    analytes: frozenset[Analyte] = frozenset({Analyte.MRD})
    events: frozenset[str] = frozenset()
    depends_on: frozenset[RuleName] = frozenset()

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        findings: list[Finding] = []
        episode: list[StoredResult] = []
        for result in ctx.results(Analyte.MRD):
            if result.detected is None or ctx.day_of(result) < 1:
                continue
            if result.detected:
                episode.append(result)
            elif episode:
                findings.append(_finding(ctx, episode, result))
                episode = []
        if episode:
            findings.append(_finding(ctx, episode, None))
        return findings


def describe_level(result: StoredResult) -> str:
    method = result.method.value if result.method else "method not stated"
    if result.value is None:
        level = "detected, below the limit of quantification" if result.detected else "not detected"
    else:
        level = f"{result.value * 100:.4g} % ({result.value:.3g})"
    if result.sensitivity is not None:
        level += f", assay sensitivity {result.sensitivity:.0e}"
    return f"{level} by {method}"


def _finding(ctx: RuleInput, detected: list[StoredResult], cleared: StoredResult | None) -> Finding:
    first = detected[0]
    quantified = [r for r in detected if r.value is not None]
    peak = max(quantified, key=lambda r: r.value or 0.0) if quantified else None
    latest = detected[-1]
    cites = [Cite(Analyte.MRD, first, "first detected MRD after day 0")]
    if peak is not None and peak is not first:
        cites.append(Cite(Analyte.MRD, peak, "highest MRD level of the episode"))
    if latest is not first and latest is not peak:
        cites.append(Cite(Analyte.MRD, latest, "latest detected MRD"))
    if cleared is not None:
        cites.append(Cite(Analyte.MRD, cleared, "MRD not detected"))

    def texts() -> Texts:
        summary = (
            f"MRD detected on day {ctx.day_of(first)} after CAR T-cell infusion: "
            f"{describe_level(first)}."
        )
        if peak is not None and peak is not first:
            summary += f" Highest level {describe_level(peak)} on day {ctx.day_of(peak)}."
        if cleared is not None:
            summary += (
                f" Resolved: MRD not detected on day {ctx.day_of(cleared)} "
                f"({describe_level(cleared)})."
            )
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold="Any detected MRD after day 0 (flow, qPCR or NGS), including below the "
            "limit of quantification",
        )

    return Finding(
        rule=RuleName.MRD_POSITIVE,
        episode_key=episode_key(first.collected_at),
        episode_start=first.collected_at,
        severity=Severity.CRITICAL,
        raised_at=first.collected_at,
        resolved_at=None if cleared is None else cleared.collected_at,
        signature="detected" if peak is None else f"peak={peak.value!r}",
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
    )


RULE = MrdPositiveRule()
