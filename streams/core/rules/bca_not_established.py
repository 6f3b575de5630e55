"""B-cell aplasia never established (``bca_not_established``) -- docs/clinical-spec.md section 1.

Source: Westhafen 2025, "Relapsed/Refractory Disease", risk factor 3 and section "T-cell
persistence": B-cell aplasia is the measure of in-vivo CD19 CAR T-cell function; without it,
functional CAR T-cells may never have expanded (primary failure).

Policy: ``bca_establish_check_day`` (21) and the aplasia thresholds of ``bca_loss``.

- If the first CD19 specimen collected on or after day 21 is qualifying and no aplastic specimen
  has been seen after day 0 → **critical**. An aplastic first specimen on or after day 21
  establishes BCA: the question is then settled and this rule never alerts.
- Resolved by the first aplastic specimen after it (BCA established late).
- A patient whose BCA was established never gets this alert (``bca_loss`` watches them).
- ``hct_performed``, ``relapse`` and ``end_of_follow_up`` resolve an open alert and end the rule.
"""

from dataclasses import dataclass
from datetime import datetime

from schemas.vocab import RuleName, Severity
from streams.core.rules.base import (
    END_OF_FOLLOW_UP,
    HCT_PERFORMED,
    RELAPSE,
    REVIEW,
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
    threshold_text,
)
from streams.core.state import ClinicalEventRecord

REFERENCES = (
    f"{REVIEW} -- section 'Relapsed/Refractory Disease', risk factor 3: \"BCA can be used as a "
    'measure of in vivo CD19 CAR T-cell functional activity"',
    "Westhafen 2025, section 'T-cell persistence'",
)
RECOMMENDATION = (
    "B-cell aplasia not established: functional CAR T-cells may never have expanded (primary "
    "failure). Evaluate marrow MRD and disease status."
)


@dataclass
class NotEstablishedAcc:
    #: an aplastic specimen after day 0 has been seen: BCA established
    aplastic_seen: bool = False
    #: the first specimen on or after the check day has been seen
    decided: bool = False
    #: the qualifying specimen of the open alert
    qualifying: Cd19Specimen | None = None
    stopped: ClinicalEventRecord | None = None


class BcaNotEstablishedRule(ScanRule[NotEstablishedAcc]):
    name = RuleName.BCA_NOT_ESTABLISHED
    reads = Reads(
        analytes=CD19,
        events=frozenset({HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP}),
        settings=(*THRESHOLD_SETTINGS, "bca_establish_check_day"),
    )
    acc_type = NotEstablishedAcc

    def start(self, ctx: RuleInput) -> NotEstablishedAcc:
        return NotEstablishedAcc()

    def feed(self, ctx: RuleInput, acc: NotEstablishedAcc, item: Item, out: list[Finding]) -> None:
        if acc.stopped is not None:
            return
        if isinstance(item, Course):
            event = ending(item)
            if event is not None:
                if acc.qualifying is not None:
                    out.append(_finding(ctx, acc.qualifying, (event.at, None, event)))
                acc.qualifying = None
                acc.stopped = event
            return
        specimen = cd19_specimen(item)
        if specimen is None:
            return
        checked = item.day >= ctx.policy.bca_establish_check_day
        if aplastic(ctx.policy, specimen):
            if acc.qualifying is not None:
                out.append(_finding(ctx, acc.qualifying, (specimen.at, specimen, None)))
                acc.qualifying = None
            acc.aplastic_seen = True
            acc.decided = acc.decided or checked
        elif checked and not acc.decided:
            acc.decided = True
            if not acc.aplastic_seen:
                acc.qualifying = specimen

    def open_findings(self, ctx: RuleInput, acc: NotEstablishedAcc) -> list[Finding]:
        return [] if acc.qualifying is None else [_finding(ctx, acc.qualifying, None)]


Resolution = tuple[datetime, Cd19Specimen | None, ClinicalEventRecord | None]


def _finding(ctx: RuleInput, qualifying: Cd19Specimen, resolved: Resolution | None) -> Finding:
    policy = ctx.policy
    evidence = cites(
        qualifying, f"first CD19 specimen on or after day {policy.bca_establish_check_day}"
    )
    if resolved is not None and resolved[1] is not None:
        evidence += cites(resolved[1], "B-cell aplasia established late")

    def texts() -> Texts:
        summary = (
            f"B-cell aplasia not established: {describe(ctx, qualifying)}, the first CD19 "
            f"specimen on or after day {policy.bca_establish_check_day}, shows B cells, and no "
            "specimen after day 0 showed aplasia."
        )
        summary += ctx.risk_sentence()
        if resolved is not None:
            _, specimen, event = resolved
            if specimen is not None:
                summary += f" Resolved: B-cell aplasia established late, {describe(ctx, specimen)}."
            elif event is not None:
                summary += f" Resolved: {course_sentence(ctx, event)}."
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=(
                f"{threshold_text(policy)}; the first CD19 specimen on or after day "
                f"{policy.bca_establish_check_day} (policy bca_establish_check_day) qualifying, "
                "none aplastic after day 0"
            ),
        )

    return Finding(
        rule=RuleName.BCA_NOT_ESTABLISHED,
        episode_key=episode_key(qualifying.at),
        episode_start=qualifying.at,
        severity=Severity.CRITICAL,
        raised_at=qualifying.at,
        resolved_at=None if resolved is None else resolved[0],
        signature="not_established",
        texts=texts,
        evidence=tuple(evidence),
        references=REFERENCES,
        context=ctx.risk_context(),
    )


RULE = BcaNotEstablishedRule()
