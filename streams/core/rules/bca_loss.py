"""Loss of B-cell aplasia (``bca_loss``).

Source: Westhafen 2025, "Risk factors for CAR T-cell failure" item 3, Table 1, Figure 3 (pooled
ELIANA/ENSIGN). B-cell aplasia (BCA) is the in-vivo sign that functional CD19 CAR T-cells persist.

Policy: ``bca_cd19_pct_threshold`` (default 1 %, 1-3 %), ``bca_cd19_abs_threshold_per_ul``
(default 10 /µL, 10-50), ``bca_confirmations`` (2; 1 raises at once), ``bca_confirmation_min_days``
(7), ``bca_immediate_multiple`` (2), ``early_loss_max_day`` (183).

- A specimen (same collection time) is *aplastic* when any CD19 result of it is below its
  threshold, *qualifying* (B cells back) when every CD19 result of it is at or above.
- BCA is established by the first aplastic specimen after day 0 (day ≥ 1).
- Loss after establishment: a second qualifying specimen ≥ 7 days after the first, or at once one
  result ≥ twice its threshold. An aplastic specimen in between cancels the pending loss.
- The onset (first qualifying specimen) decides severity: day ≤ 183 critical, else warning.
- Resolved when BCA is re-established (an aplastic specimen after the loss).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.vocab import Analyte, ClinicalEventKind, RuleName, Severity
from streams.core.policy import Policy
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

CD19 = (Analyte.CD19_PCT, Analyte.CD19_ABS)
REFERENCES = (
    f"{REVIEW} -- 'Risk factors for CAR T-cell failure' item 3, Table 1, Figure 3",
    "Pooled ELIANA/ENSIGN: 24-month EFS 14 % after loss of B-cell aplasia within 6 months; "
    "HR for relapse 4.5 for loss within 1 year",
)
EARLY_RECOMMENDATION = (
    "High risk of CD19-positive relapse. Evaluate marrow MRD (NGS where available). In "
    "HCT-eligible patients without prior HCT there is reasonable evidence to recommend "
    "consolidative HCT; reinfusion or maintenance therapy are options under study."
)
LATE_RECOMMENDATION = (
    "B-cell recovery after 6 months alone does not necessarily imply relapse; evaluate MRD and "
    "continue close monitoring."
)

Specimen = tuple[datetime, list[tuple[Analyte, StoredResult]]]


@dataclass(frozen=True)
class BcaLossRule(EveryResultMatters):
    name: RuleName = RuleName.BCA_LOSS
    analytes: frozenset[Analyte] = frozenset(CD19)
    events: frozenset[str] = frozenset({ClinicalEventKind.REINFUSION.value})
    depends_on: frozenset[RuleName] = frozenset()

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        policy = ctx.policy
        findings: list[Finding] = []
        established: Specimen | None = None
        onset: Specimen | None = None
        confirmed: Specimen | None = None
        for specimen in _specimens(ctx):
            aplastic = any(_below(policy, a, r) for a, r in specimen[1])
            if aplastic:
                if confirmed is not None and onset is not None:
                    findings.append(_finding(ctx, established, onset, confirmed, specimen))
                onset = confirmed = None
                established = specimen
            elif established is not None and confirmed is None:
                if onset is None:
                    onset = specimen
                if _confirms(policy, onset, specimen):
                    confirmed = specimen
        if confirmed is not None and onset is not None:
            findings.append(_finding(ctx, established, onset, confirmed, None))
        return findings


def _specimens(ctx: RuleInput) -> list[Specimen]:
    by_time: dict[datetime, list[tuple[Analyte, StoredResult]]] = {}
    for analyte in CD19:
        for result in ctx.results(analyte):
            if result.value is not None and ctx.day_of(result) >= 1:
                by_time.setdefault(result.collected_at, []).append((analyte, result))
    return sorted(by_time.items(), key=lambda item: item[0])


def _threshold(policy: Policy, analyte: Analyte) -> float:
    if analyte is Analyte.CD19_PCT:
        return policy.bca_cd19_pct_threshold
    return policy.bca_cd19_abs_threshold_per_ul


def _below(policy: Policy, analyte: Analyte, result: StoredResult) -> bool:
    return (result.value or 0.0) < _threshold(policy, analyte)


def _confirms(policy: Policy, onset: Specimen, specimen: Specimen) -> bool:
    if policy.bca_confirmations == 1:
        return True
    multiple = policy.bca_immediate_multiple
    if any((r.value or 0.0) >= multiple * _threshold(policy, a) for a, r in specimen[1]):
        return True
    return specimen[0] - onset[0] >= timedelta(days=policy.bca_confirmation_min_days)


def _describe(ctx: RuleInput, specimen: Specimen) -> str:
    values = ", ".join(
        f"CD19+ {r.value:g} {'% of lymphocytes' if a is Analyte.CD19_PCT else 'cells/µL'}"
        for a, r in specimen[1]
    )
    return f"{values} on day {ctx.day(specimen[0])}"


def _finding(
    ctx: RuleInput,
    established: Specimen | None,
    onset: Specimen,
    confirmed: Specimen,
    reestablished: Specimen | None,
) -> Finding:
    policy = ctx.policy
    onset_day = ctx.day(onset[0])
    early = onset_day <= policy.early_loss_max_day
    cites: list[Cite] = []
    if established is not None:
        cites += [Cite(a, r, "last specimen with B-cell aplasia") for a, r in established[1]]
    cites += [Cite(a, r, "onset: first specimen with B cells back") for a, r in onset[1]]
    if confirmed is not onset:
        cites += [Cite(a, r, "confirming specimen") for a, r in confirmed[1]]
    if reestablished is not None:
        cites += [Cite(a, r, "B-cell aplasia re-established") for a, r in reestablished[1]]

    def texts() -> Texts:
        summary = f"Loss of B-cell aplasia: {_describe(ctx, onset)} (onset)"
        if confirmed is not onset:
            summary += f", confirmed by {_describe(ctx, confirmed)}"
        if established is not None:
            summary += f"; aplasia before: {_describe(ctx, established)}"
        summary += f". Onset on day {onset_day}, " + (
            "within 6 months (day ≤ 183)." if early else "after 6 months (day > 183)."
        )
        reinfusions = [e.at for e in ctx.events() if e.kind is ClinicalEventKind.REINFUSION]
        if reinfusions:
            summary += (
                " CAR T-cell reinfusion recorded on day "
                + ", ".join(str(ctx.day(at)) for at in reinfusions)
                + "."
            )
        if reestablished is not None:
            summary += f" Resolved: aplasia re-established, {_describe(ctx, reestablished)}."
        return Texts(
            summary=summary,
            recommendation=EARLY_RECOMMENDATION if early else LATE_RECOMMENDATION,
            threshold=(
                f"Aplasia: CD19+ < {policy.bca_cd19_pct_threshold:g} % of lymphocytes or "
                f"< {policy.bca_cd19_abs_threshold_per_ul:g} cells/µL; loss confirmed by "
                f"{policy.bca_confirmations} qualifying specimen(s) ≥ "
                f"{policy.bca_confirmation_min_days} days apart, or one result ≥ "
                f"{policy.bca_immediate_multiple:g}× threshold; critical if onset day ≤ "
                f"{policy.early_loss_max_day}"
            ),
        )

    return Finding(
        rule=RuleName.BCA_LOSS,
        episode_key=episode_key(onset[0]),
        episode_start=onset[0],
        severity=Severity.CRITICAL if early else Severity.WARNING,
        raised_at=confirmed[0],
        resolved_at=None if reestablished is None else reestablished[0],
        signature="loss",
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
    )


RULE = BcaLossRule()
