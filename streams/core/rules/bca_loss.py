"""Loss of B-cell aplasia (``bca_loss``) -- docs/clinical-spec.md section 1.

Source: Westhafen 2025, "Relapsed/Refractory Disease", risk factor 3 (early loss of B-cell
aplasia), Table 1 ("Short CAR persistence (loss of BCA)"), Figure 3. B-cell aplasia (BCA) is the
in-vivo sign that functional CD19 CAR T-cells persist.

Policy: ``bca_cd19_pct_threshold`` (1 %, 1-3), ``bca_cd19_abs_threshold_per_ul`` (10 /µL, 10-50),
``bca_confirmations`` (2; 1 raises at once), ``bca_confirmation_min_days`` (7),
``bca_immediate_multiple`` (2), ``early_loss_max_day`` (183).

- BCA is established by the first aplastic specimen after day 0 (``streams.core.rules.bcell``).
- Loss after establishment: a second qualifying specimen at least 7 days after the first (a
  difference of day numbers: weekly samples drawn at different hours are a week apart), or at
  once one result at ≥ twice its threshold. An aplastic specimen in between cancels the pending
  loss.
- The onset (first qualifying specimen) decides severity: day ≤ 183 critical, else warning.
- Resolved when BCA is re-established (an aplastic specimen after the loss), or by
  ``hct_performed`` (donor B-cell recovery is expected), ``relapse`` (the response being
  monitored is over) or ``end_of_follow_up``; after any of these no new loss is raised -- a
  reinfusion after a relapse does not restart it.
- The accumulator keeps what pruning must not lose: the last aplastic specimen (BCA established),
  the pending onset, the open loss, and the first early loss ever (the basis
  ``hct_consolidation`` builds on).
"""

from dataclasses import dataclass, field
from datetime import datetime

from schemas.vocab import ClinicalEventKind, RuleName, Severity
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
    ending,
    episode_key,
)
from streams.core.rules.bcell import (
    CD19,
    THRESHOLD_SETTINGS,
    Cd19Specimen,
    aplastic,
    cd19_specimen,
    cites,
    describe,
    threshold,
    threshold_text,
)
from streams.core.state import ClinicalEventRecord

REFERENCES = (
    f"{REVIEW} -- section 'Relapsed/Refractory Disease', risk factor 3 \"Early Loss of B-cell "
    'aplasia (BCA)": "Loss of BCA implies the absence of functional CAR T-cells, and if it occurs '
    'within 6 months post-infusion, it is associated with a high risk of CD19-positive relapse."; '
    "Figure 3 'Algorithm based on loss of B-cell aplasia (BCA) within 6 months of infusion'",
    "Westhafen 2025, Table 1 'Risk Factors for CAR T-cell Therapy Failure', short CAR "
    'persistence: "Pooled ELIANA/ENSIGN analysis (N = 143): loss of BCA within 1 y was associated '
    "with increased relapse risk (HR 4.5, P < .001). Patients with loss of BCA within 6 mo had a "
    '24-mo EFS of 14%."',
)
LATE_REFERENCE = (
    "Westhafen 2025, section 'T-cell persistence': \"B-cell recovery alone does not necessarily "
    'imply relapse"'
)


@dataclass
class BcaLossAcc:
    established: Cd19Specimen | None = None
    onset: Cd19Specimen | None = None
    confirmed: Cd19Specimen | None = None
    stopped: ClinicalEventRecord | None = None
    reinfusions: list[datetime] = field(default_factory=list)
    #: the first loss with onset within 6 months (``hct_consolidation`` builds on it)
    first_early_loss: Basis | None = None


class BcaLossRule(ScanRule[BcaLossAcc]):
    name = RuleName.BCA_LOSS
    reads = Reads(
        analytes=CD19,
        events=frozenset({ClinicalEventKind.REINFUSION, HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP}),
        settings=(
            *THRESHOLD_SETTINGS,
            "bca_confirmations",
            "bca_confirmation_min_days",
            "bca_immediate_multiple",
            "early_loss_max_day",
        ),
    )
    acc_type = BcaLossAcc

    def start(self, ctx: RuleInput) -> BcaLossAcc:
        return BcaLossAcc()

    def feed(self, ctx: RuleInput, acc: BcaLossAcc, item: Item, out: list[Finding]) -> None:
        if isinstance(item, Course):
            self._course(ctx, acc, item, out)
            return
        specimen = cd19_specimen(item)
        if specimen is None or acc.stopped is not None:
            return
        policy = ctx.policy
        if aplastic(policy, specimen):
            if acc.confirmed is not None:
                out.append(_finding(ctx, acc, resolved=(specimen.at, specimen, None)))
            acc.onset = acc.confirmed = None
            acc.established = specimen
        elif acc.established is not None and acc.confirmed is None:
            if acc.onset is None:
                acc.onset = specimen
            if _confirms(ctx, acc.onset, specimen):
                acc.confirmed = specimen
                if acc.first_early_loss is None and _early(ctx, acc.onset):
                    evidence = [
                        (c.analyte, c.result, c.note or "") for c in _evidence(acc, acc.confirmed)
                    ]
                    acc.first_early_loss = Basis(specimen.at, evidence)

    def _course(self, ctx: RuleInput, acc: BcaLossAcc, item: Course, out: list[Finding]) -> None:
        if acc.stopped is not None:
            return
        if item.kind is ClinicalEventKind.REINFUSION:
            acc.reinfusions.append(item.at)
            return
        event = ending(item)
        if event is None:
            return
        if acc.confirmed is not None:
            out.append(_finding(ctx, acc, resolved=(event.at, None, event)))
        acc.onset = acc.confirmed = None
        acc.stopped = event

    def open_findings(self, ctx: RuleInput, acc: BcaLossAcc) -> list[Finding]:
        if acc.confirmed is None:
            return []
        return [_finding(ctx, acc, resolved=None)]


def _early(ctx: RuleInput, onset: Cd19Specimen) -> bool:
    return ctx.day(onset.at) <= ctx.policy.early_loss_max_day


def _confirms(ctx: RuleInput, onset: Cd19Specimen, specimen: Cd19Specimen) -> bool:
    policy = ctx.policy
    if policy.bca_confirmations == 1:
        return True
    multiple = policy.bca_immediate_multiple
    if any((r.value or 0.0) >= multiple * threshold(policy, a) for a, r in specimen.results):
        return True
    return ctx.day(specimen.at) - ctx.day(onset.at) >= policy.bca_confirmation_min_days


def _evidence(acc: BcaLossAcc, confirmed: Cd19Specimen) -> list[Cite]:
    assert acc.onset is not None
    found: list[Cite] = []
    if acc.established is not None:
        found += cites(acc.established, "last specimen with B-cell aplasia")
    found += cites(acc.onset, "onset: first specimen with B cells back")
    if confirmed != acc.onset:
        found += cites(confirmed, "confirming specimen")
    return found


Resolution = tuple[datetime, Cd19Specimen | None, ClinicalEventRecord | None]


def _finding(ctx: RuleInput, acc: BcaLossAcc, resolved: Resolution | None) -> Finding:
    onset, confirmed, established = acc.onset, acc.confirmed, acc.established
    assert onset is not None and confirmed is not None
    policy = ctx.policy
    onset_day = ctx.day(onset.at)
    early = onset_day <= policy.early_loss_max_day
    evidence = _evidence(acc, confirmed)
    if resolved is not None and resolved[1] is not None:
        evidence += cites(resolved[1], "B-cell aplasia re-established")
    reinfusions = [ctx.day(at) for at in acc.reinfusions]

    def texts() -> Texts:
        summary = f"Loss of B-cell aplasia: {describe(ctx, onset)} (onset)"
        if confirmed != onset:
            summary += f", confirmed by {describe(ctx, confirmed)}"
        if established is not None:
            summary += f"; aplasia before: {describe(ctx, established)}"
        summary += f". Onset on day {onset_day}, " + (
            f"within 6 months (day ≤ {policy.early_loss_max_day})."
            if early
            else f"after 6 months (day > {policy.early_loss_max_day})."
        )
        if reinfusions:
            summary += " CAR T-cell reinfusion recorded on day " + ", ".join(
                str(day) for day in reinfusions
            )
            summary += "."
        summary += ctx.risk_sentence()
        if resolved is not None:
            _, specimen, event = resolved
            if specimen is not None:
                summary += f" Resolved: aplasia re-established, {describe(ctx, specimen)}."
            elif event is not None:
                summary += f" Resolved: {course_sentence(ctx, event)}{_why_stopped(event)}."
        return Texts(
            summary=summary,
            recommendation=_recommendation(ctx, early),
            threshold=(
                f"{threshold_text(policy)}; loss confirmed by {policy.bca_confirmations} "
                f"qualifying specimen(s), the second ≥ {policy.bca_confirmation_min_days} days "
                "after the first (a difference of day numbers), or by one result ≥ "
                f"{policy.bca_immediate_multiple:g}× its threshold; critical if onset day ≤ "
                f"{policy.early_loss_max_day}"
            ),
        )

    return Finding(
        rule=RuleName.BCA_LOSS,
        episode_key=episode_key(onset.at),
        episode_start=onset.at,
        severity=Severity.CRITICAL if early else Severity.WARNING,
        raised_at=confirmed.at,
        resolved_at=None if resolved is None else resolved[0],
        signature="loss",
        texts=texts,
        evidence=tuple(evidence),
        references=REFERENCES if early else (*REFERENCES, LATE_REFERENCE),
        context=ctx.risk_context(),
    )


def _why_stopped(event: ClinicalEventRecord) -> str:
    if event.kind is HCT_PERFORMED:
        return "; donor B-cell recovery is expected after HCT, so B-cell aplasia is no longer monitored"
    if event.kind is RELAPSE:
        return "; the response being monitored is over"
    return "; monitoring ended"


def _recommendation(ctx: RuleInput, early: bool) -> str:
    if not early:
        return (
            "B-cell recovery after 6 months alone does not necessarily imply relapse; evaluate "
            "MRD and continue close monitoring."
        )
    enrollment = ctx.state.enrollment
    assert enrollment is not None
    text = "High risk of CD19-positive relapse. Evaluate marrow MRD (NGS where available)."
    if enrollment.prior_hct:
        text += (
            " After a prior HCT the optimal approach has yet to be determined and requires "
            "special consideration."
        )
    elif enrollment.hct_eligible is not False:
        eligible = "" if enrollment.hct_eligible else " (if eligible for HCT)"
        text += (
            f" In HCT-eligible patients without prior HCT there is reasonable evidence to "
            f"recommend consolidative HCT{eligible}."
        )
    return text + " Reinfusion or maintenance therapy are options under study."


RULE = BcaLossRule()
