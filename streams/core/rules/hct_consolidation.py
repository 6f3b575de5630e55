"""Consolidative HCT advice (``hct_consolidation``) -- one alert per patient.

Source: Westhafen 2025, recommendations for patients eligible for HCT without prior HCT
("HCT for all vs. selective use"). Applies when ``hct_eligible`` is true or absent (then the text
says "if eligible for HCT") and ``prior_hct`` is false:

- *may be considered* (info): a risk factor among donor_available_wishes_hct,
  high_disease_burden, blinatumomab_failure, refractory_disease, kmt2a_rearranged, tp53_mutated;
- *reasonable evidence to recommend* (warning, ``updated`` from info): a CD28-costimulated product
  (HCT 4-8 weeks after infusion), a ``bca_loss`` with onset within 6 months, or an
  ``mrd_positive`` alert. When those bases are retracted it falls back to info, or is retracted
  when nothing remains.

With prior HCT and a ``bca_loss`` within 6 months: info "requires special consideration" with the
factors to weigh. A patient recorded as not eligible for HCT (``hct_eligible`` false) gets no HCT
advice at all, prior HCT or not: the eligibility decision is the clinicians' and already made. With prior HCT and MRD positivity the review makes no recommendation: nothing.
The alert's episode is the patient's enrollment, so its id is stable for the patient.
"""

from dataclasses import dataclass

from schemas.vocab import Analyte, CostimulatoryDomain, RiskFactor, RuleName, Severity
from streams.core.rules.base import REVIEW, Cite, EveryResultMatters, Finding, RuleInput, Texts

REFERENCES = (
    f"{REVIEW} -- section 'HCT for all vs. selective use', recommendations for patients "
    "eligible for HCT without prior HCT",
)
MAY_CONSIDER = {
    RiskFactor.DONOR_AVAILABLE_WISHES_HCT: "donor available and patient/family wish HCT",
    RiskFactor.HIGH_DISEASE_BURDEN: "high disease burden (> 5 % up to > 25 % blasts before "
    "lymphodepletion)",
    RiskFactor.BLINATUMOMAB_FAILURE: "blinatumomab failure",
    RiskFactor.REFRACTORY_DISEASE: "refractory disease",
    RiskFactor.KMT2A_REARRANGED: "KMT2A rearrangement (another relapse unlikely to be treatable)",
    RiskFactor.TP53_MUTATED: "TP53 mutation (another relapse unlikely to be treatable)",
}
SPECIAL_FACTORS = (
    "time since the first HCT, its conditioning and donor, a CD19-negative clone before "
    "infusion, donor availability, comorbidities, previous toxicities"
)


@dataclass(frozen=True)
class HctConsolidationRule(EveryResultMatters):
    name: RuleName = RuleName.HCT_CONSOLIDATION
    analytes: frozenset[Analyte] = frozenset()
    events: frozenset[str] = frozenset()
    depends_on: frozenset[RuleName] = frozenset({RuleName.BCA_LOSS, RuleName.MRD_POSITIVE})

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        enrollment = ctx.state.enrollment
        assert enrollment is not None
        bases: list[tuple[str, Finding | None]] = []
        early_losses = [
            f for f in ctx.findings(RuleName.BCA_LOSS) if f.severity is Severity.CRITICAL
        ]
        if enrollment.hct_eligible is False:
            return []
        if enrollment.prior_hct:
            if not early_losses:
                return []
            bases.append(("early loss of B-cell aplasia after prior HCT", early_losses[0]))
            return [_finding(ctx, Severity.INFO, [], bases, special=True)]
        reasons = [MAY_CONSIDER[f] for f in enrollment.risk_factors if f in MAY_CONSIDER]
        if enrollment.costimulatory_domain is CostimulatoryDomain.CD28:
            bases.append(("CD28-costimulated product (HCT 4-8 weeks after infusion)", None))
        bases += [("loss of B-cell aplasia within 6 months", f) for f in early_losses[:1]]
        bases += [
            ("MRD positivity after CAR T", f) for f in ctx.findings(RuleName.MRD_POSITIVE)[:1]
        ]
        if bases:
            return [_finding(ctx, Severity.WARNING, reasons, bases, special=False)]
        if reasons:
            return [_finding(ctx, Severity.INFO, reasons, [], special=False)]
        return []


def _finding(
    ctx: RuleInput,
    severity: Severity,
    reasons: list[str],
    bases: list[tuple[str, Finding | None]],
    special: bool,
) -> Finding:
    enrollment = ctx.state.enrollment
    assert enrollment is not None
    infused_at = enrollment.infused_at
    times = [infused_at if f is None else f.raised_at for _, f in bases]
    raised_at = min([*times, infused_at]) if reasons else min(times)
    evidence: list[Cite] = [c for _, f in bases if f is not None for c in f.evidence]
    conditional = "" if enrollment.hct_eligible else " if eligible for HCT"

    def texts() -> Texts:
        if special:
            summary = (
                "Loss of B-cell aplasia within 6 months after CAR T in a patient with prior HCT: "
                f"a second HCT requires special consideration. Factors to weigh: {SPECIAL_FACTORS}."
            )
            recommendation = "Discuss in a multidisciplinary transplant board."
        elif severity is Severity.WARNING:
            summary = (
                f"Reasonable evidence to recommend consolidative HCT{conditional}: "
                + "; ".join(name for name, _ in bases)
                + "."
            )
            if reasons:
                summary += " Further risk factors: " + "; ".join(reasons) + "."
            recommendation = "Refer for consolidative HCT evaluation" + conditional + "."
        else:
            summary = (
                f"Consolidative HCT may be considered{conditional}: " + "; ".join(reasons) + "."
            )
            recommendation = "Consider HCT consultation" + conditional + "."
        return Texts(
            summary=summary,
            recommendation=recommendation,
            threshold="Westhafen 2025 HCT recommendations: may be considered with high-risk "
            "features; reasonable evidence to recommend with a CD28 product, loss of B-cell "
            "aplasia within 6 months or MRD positivity (no prior HCT)",
        )

    return Finding(
        rule=RuleName.HCT_CONSOLIDATION,
        episode_key="enrollment",
        episode_start=infused_at,
        severity=severity,
        raised_at=raised_at,
        resolved_at=None,
        signature=("special" if special else severity.value)
        + "|"
        + "|".join(name for name, _ in bases),
        texts=texts,
        evidence=tuple(evidence),
        references=REFERENCES,
    )


RULE = HctConsolidationRule()
