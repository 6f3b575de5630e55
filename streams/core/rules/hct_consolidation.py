"""Consolidative HCT advice (``hct_consolidation``) -- docs/clinical-spec.md section 6.

Source: Westhafen 2025, "HCT for all vs. selective use", the recommendations for patients
eligible for HCT without prior HCT, and Figures 2 and 3. One alert per patient. It applies when
``hct_eligible`` is true or absent (then the text says "if eligible for HCT") and ``prior_hct``
is false:

- *may be considered* (info): a risk factor among donor_available_wishes_hct,
  high_disease_burden, blinatumomab_failure, refractory_disease, kmt2a_rearranged, tp53_mutated;
- *reasonable evidence to recommend* (warning, ``updated`` from info): a CD28-costimulated product
  (HCT 4-8 weeks after infusion), a ``bca_loss`` with onset within 6 months, or an
  ``mrd_positive`` alert -- read from those rules' accumulators (the first early loss, the first
  positivity), which keep them beyond pruning. When those bases are retracted it falls back to
  info, or is retracted when nothing remains.

With prior HCT and a loss of BCA within 6 months: info "requires special consideration" with the
factors to weigh. With prior HCT and MRD positivity the review makes no recommendation: nothing.
A patient recorded as not eligible for HCT (``hct_eligible`` false) gets no HCT advice at all
(rev. 2), prior HCT or not: the eligibility decision is the clinicians' and already made.

``hct_performed`` resolves it ("consolidative HCT performed on day N") and ``relapse`` or
``end_of_follow_up`` resolve it with their reason; bases that appear after that are not read.
The alert's episode is the patient's enrollment, so its id is stable for the patient.
"""

from dataclasses import dataclass
from datetime import datetime

from schemas.vocab import CostimulatoryDomain, RiskFactor, RuleName, Severity
from streams.core.rules.base import (
    END_OF_FOLLOW_UP,
    HCT_PERFORMED,
    RELAPSE,
    REVIEW,
    Basis,
    Cite,
    Course,
    Finding,
    Item,
    Reads,
    RuleInput,
    ScanRule,
    Texts,
    course_sentence,
)
from streams.core.state import ClinicalEventRecord

REFERENCES = (
    f"{REVIEW} -- section 'HCT for all vs. selective use': \"In patients who are eligible to "
    "proceed to HCT and do not have a history of prior HCT\"; Figure 2 'Algorithm based on "
    "Minimal Residual Disease (MRD)'; Figure 3 'Algorithm based on loss of B-cell aplasia (BCA) "
    "within 6 months of infusion'",
)
MAY_CONSIDER = {
    RiskFactor.DONOR_AVAILABLE_WISHES_HCT: "appropriate donor available and desire to proceed "
    "with HCT",
    RiskFactor.HIGH_DISEASE_BURDEN: "high disease burden (> 5 % up to > 25 % blasts before "
    "lymphodepletion)",
    RiskFactor.BLINATUMOMAB_FAILURE: "prior treatment failure with blinatumomab",
    RiskFactor.REFRACTORY_DISEASE: "history of refractoriness (another relapse unlikely to be "
    "treatable)",
    RiskFactor.KMT2A_REARRANGED: "KMT2A rearrangement (adverse cytogenetics: another relapse "
    "unlikely to be treatable)",
    RiskFactor.TP53_MUTATED: "TP53 mutation (adverse cytogenetics: another relapse unlikely to be "
    "treatable)",
}
SPECIAL_FACTORS = (
    "time since the first HCT, its conditioning and donor (regimen, donor type), a CD19-negative "
    "clone before CAR T-cell infusion, donor availability, comorbidities, previous toxicities"
)


@dataclass
class HctAcc:
    #: the first course event that ends the advice (hct_performed, relapse, end_of_follow_up)
    ended: ClinicalEventRecord | None = None


class HctConsolidationRule(ScanRule[HctAcc]):
    name = RuleName.HCT_CONSOLIDATION
    reads = Reads(
        events=frozenset({HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP}),
        settings=("early_loss_max_day",),
        depends_on=(RuleName.BCA_LOSS, RuleName.MRD_POSITIVE),
    )
    acc_type = HctAcc

    def start(self, ctx: RuleInput) -> HctAcc:
        return HctAcc()

    def feed(self, ctx: RuleInput, acc: HctAcc, item: Item, out: list[Finding]) -> None:
        if acc.ended is None and isinstance(item, Course):
            acc.ended = item.event

    def open_findings(self, ctx: RuleInput, acc: HctAcc) -> list[Finding]:
        enrollment = ctx.state.enrollment
        assert enrollment is not None
        if enrollment.hct_eligible is False:
            return []
        ended = acc.ended
        early_loss = _before(ctx.evaluation(RuleName.BCA_LOSS).acc.first_early_loss, ended)
        mrd = _before(ctx.evaluation(RuleName.MRD_POSITIVE).acc.first_positive, ended)
        bases: list[tuple[str, Basis | None]] = []
        if enrollment.prior_hct:
            if early_loss is None:
                return []
            bases.append(("early loss of B-cell aplasia after prior HCT", early_loss))
            return [_finding(ctx, Severity.INFO, [], bases, ended, special=True)]
        reasons = [MAY_CONSIDER[f] for f in enrollment.risk_factors if f in MAY_CONSIDER]
        if enrollment.costimulatory_domain is CostimulatoryDomain.CD28:
            bases.append(("CD28-costimulated product (HCT 4-8 weeks after infusion)", None))
        if early_loss is not None:
            bases.append(("loss of B-cell aplasia within 6 months of infusion", early_loss))
        if mrd is not None:
            bases.append(("MRD positivity after CAR T-cell infusion", mrd))
        if bases:
            return [_finding(ctx, Severity.WARNING, reasons, bases, ended, special=False)]
        if reasons:
            return [_finding(ctx, Severity.INFO, reasons, [], ended, special=False)]
        return []


def _before(basis: Basis | None, ended: ClinicalEventRecord | None) -> Basis | None:
    if basis is None or (ended is not None and basis.raised_at >= ended.at):
        return None
    return basis


def _finding(
    ctx: RuleInput,
    severity: Severity,
    reasons: list[str],
    bases: list[tuple[str, Basis | None]],
    ended: ClinicalEventRecord | None,
    special: bool,
) -> Finding:
    enrollment = ctx.state.enrollment
    assert enrollment is not None
    infused_at = enrollment.infused_at
    times: list[datetime] = [infused_at if b is None else b.raised_at for _, b in bases]
    raised_at = min([*times, infused_at]) if reasons else min(times)
    evidence: list[Cite] = [c for _, b in bases if b is not None for c in b.cites()]
    conditional = "" if enrollment.hct_eligible else " if eligible for HCT"

    def texts() -> Texts:
        if special:
            summary = (
                "Loss of B-cell aplasia within 6 months after CAR T in a patient with prior HCT: "
                "the optimal approach has yet to be determined and requires special "
                f"consideration. Factors to weigh: {SPECIAL_FACTORS}."
            )
            recommendation = "Discuss in a multidisciplinary transplant board."
        elif severity is Severity.WARNING:
            summary = (
                f"Reasonable evidence to recommend consolidative HCT{conditional}: "
                + "; ".join(name for name, _ in bases)
                + "."
            )
            if reasons:
                summary += (
                    " Consolidative HCT may also be considered for: " + "; ".join(reasons) + "."
                )
            recommendation = "Refer for consolidative HCT evaluation" + conditional + "."
        else:
            summary = (
                f"Consolidative HCT may be considered{conditional}: " + "; ".join(reasons) + "."
            )
            recommendation = "Consider HCT consultation" + conditional + "."
        summary += ctx.risk_sentence()
        if ended is not None:
            what = (
                f"consolidative HCT performed on day {ctx.day(ended.at)}"
                if ended.kind is HCT_PERFORMED
                else course_sentence(ctx, ended)
            )
            summary += f" Resolved: {what}."
        return Texts(
            summary=summary,
            recommendation=recommendation,
            threshold="Westhafen 2025 HCT recommendations (eligible, no prior HCT): may be "
            "considered with a donor and the wish for HCT, high disease burden, blinatumomab "
            "failure or a relapse unlikely to be treatable; reasonable evidence to recommend "
            "with a CD28 product, loss of B-cell aplasia within 6 months or MRD positivity",
        )

    return Finding(
        rule=RuleName.HCT_CONSOLIDATION,
        episode_key="enrollment",
        episode_start=infused_at,
        severity=severity,
        raised_at=raised_at,
        resolved_at=None if ended is None else ended.at,
        signature=("special" if special else severity.value)
        + "|"
        + "|".join(name for name, _ in bases),
        texts=texts,
        evidence=tuple(evidence),
        references=REFERENCES,
        context=ctx.risk_context(),
    )


RULE = HctConsolidationRule()
