"""MRD positivity (``mrd_positive``) -- docs/clinical-spec.md section 5.

Source: Westhafen 2025, "HCT for all vs. selective use" (reasonable evidence to recommend
consolidative HCT with MRD positivity at any level after CAR T-cell infusion) and Figure 2
(algorithm based on MRD).

- Any detected MRD collected after day 0 (day ≥ 1), by flow cytometry, qPCR or NGS, at any level
  -- including "detected, below the limit of quantification" → critical. "Not detected" is never
  read as 0: the ``detected`` flag decides, the value is only the level. A level above the
  previous detected one (a level below the limit of quantification counts as none) is new
  evidence (``updated``), not a new alert.
- Resolved by a later MRD result reported not detected by an assay at least as sensitive as the
  most sensitive assay that detected the disease in this episode (rev. 2). An unknown
  sensitivity counts as 10⁻⁴ for flow and qPCR and 10⁻⁶ for NGS (policy
  ``mrd_sensitivity_flow``, ``_pcr``, ``_ngs``). Decision where the method is unknown too: a
  positive counts as the most sensitive (10⁻⁶) and a negative as the least (10⁻⁴), so that an
  unknown assay never clears disease a sensitive one found. A less sensitive negative is shown as
  ``updated`` context and does not resolve. Results of one specimen are one observation:
  detected by any assay means detected.
- ``relapse`` and ``end_of_follow_up`` resolve the alert and end the rule; ``hct_performed``
  resolves the open alert, and MRD is still monitored after it (a later positive is a new alert).
"""

from dataclasses import dataclass, field
from datetime import datetime

from schemas.vocab import Analyte, MrdMethod, RuleName, Severity
from streams.core.policy import Policy
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
    episode_key,
)
from streams.core.state import ClinicalEventRecord, StoredResult
from streams.core.text import mrd_level, power_of_ten

REFERENCES = (
    f"{REVIEW} -- section 'HCT for all vs. selective use': \"there is reasonable evidence to "
    'recommend consolidative HCT in patients who" ... "present with MRD positivity at any level '
    "after CAR T-cell infusion\"; Figure 2 'Algorithm based on Minimal Residual Disease (MRD)'",
)
RECOMMENDATION = (
    "Confirm the CD19 status of the clone (CD19-negative escape). In HCT-eligible patients "
    "without prior HCT there is reasonable evidence to recommend consolidative HCT."
)


@dataclass
class MrdEpisode:
    first: StoredResult
    peak: StoredResult | None
    latest: StoredResult
    #: the sensitivity a negative must reach to resolve (the most sensitive positive's)
    required: float
    #: the method of that most sensitive positive
    required_method: MrdMethod | None
    #: the latest negative too insensitive to resolve (shown as context)
    insufficient: StoredResult | None = None
    #: how often the level rose above the previous detected one (each rise is new evidence)
    rises: int = 0
    #: when the results that rose were collected (a cancelled rise replaced by another is new
    #: evidence too); empty in a carry stored before this field existed
    rose_at: list[datetime] = field(default_factory=list)


@dataclass
class MrdAcc:
    episode: MrdEpisode | None = None
    first_positive: Basis | None = None
    stopped: ClinicalEventRecord | None = None


def sensitivity(policy: Policy, result: StoredResult, detected: bool) -> float:
    """The assay's sensitivity: as reported, else by method, else by the module's decision."""
    if result.sensitivity is not None:
        return result.sensitivity
    by_method = {
        MrdMethod.FLOW: policy.mrd_sensitivity_flow,
        MrdMethod.PCR: policy.mrd_sensitivity_pcr,
        MrdMethod.NGS: policy.mrd_sensitivity_ngs,
    }
    if result.method is not None:
        return by_method[result.method]
    return min(by_method.values()) if detected else max(by_method.values())


def _method_name(method: MrdMethod | None) -> str:
    if method is None:
        return "assay"
    return {MrdMethod.FLOW: "flow", MrdMethod.PCR: "qPCR", MrdMethod.NGS: "NGS"}[method]


def describe(policy: Policy, result: StoredResult) -> str:
    method = result.method.value if result.method else "method not stated"
    known = "" if result.sensitivity is not None else " (assumed)"
    sens = power_of_ten(sensitivity(policy, result, bool(result.detected)))
    return f"{mrd_level(result)} by {method}, assay sensitivity {sens}{known}"


class MrdPositiveRule(ScanRule[MrdAcc]):
    name = RuleName.MRD_POSITIVE
    reads = Reads(
        analytes=frozenset({Analyte.MRD}),
        events=frozenset({HCT_PERFORMED, RELAPSE, END_OF_FOLLOW_UP}),
        settings=("mrd_sensitivity_flow", "mrd_sensitivity_pcr", "mrd_sensitivity_ngs"),
    )
    acc_type = MrdAcc

    def feed(self, ctx: RuleInput, acc: MrdAcc, item: Item, out: list[Finding]) -> None:
        if acc.stopped is not None:
            return
        if isinstance(item, Course):
            if acc.episode is not None:
                out.append(_finding(ctx, acc.episode, None, item.event))
                acc.episode = None
            if item.kind is not HCT_PERFORMED:
                acc.stopped = item.event
            return
        if item.day < 1:
            return
        result = _observation(ctx.policy, item.of(Analyte.MRD))
        if result is not None:
            _result(ctx, acc, result, out)

    def open_findings(self, ctx: RuleInput, acc: MrdAcc) -> list[Finding]:
        return [] if acc.episode is None else [_finding(ctx, acc.episode, None, None)]


def _observation(policy: Policy, results: list[StoredResult]) -> StoredResult | None:
    """One specimen's MRD: detected by any assay means detected (the most sensitive positive
    assay speaks for it); else the most sensitive negative. A negative beside a positive of the
    same sample never clears it."""
    reported = [r for r in results if r.detected is not None]
    positives = [r for r in reported if r.detected]
    chosen = positives or reported
    if not chosen:
        return None
    return min(chosen, key=lambda r: sensitivity(policy, r, bool(r.detected)))


def _result(ctx: RuleInput, acc: MrdAcc, result: StoredResult, out: list[Finding]) -> None:
    policy = ctx.policy
    episode = acc.episode
    if result.detected:
        sens = sensitivity(policy, result, True)
        quantified = result if result.value is not None else None
        if episode is None:
            acc.episode = MrdEpisode(result, quantified, result, sens, result.method)
            if acc.first_positive is None:
                acc.first_positive = Basis(
                    result.collected_at,
                    [(Analyte.MRD, result, "first detected MRD after day 0")],
                )
            return
        if (result.value or 0.0) > (episode.latest.value or 0.0):
            episode.rises += 1
            episode.rose_at.append(result.collected_at)
        episode.latest = result
        if sens < episode.required:
            episode.required, episode.required_method = sens, result.method
        if quantified is not None and (
            episode.peak is None or (result.value or 0.0) > (episode.peak.value or 0.0)
        ):
            episode.peak = quantified
        return
    if episode is None:
        return
    if sensitivity(policy, result, False) <= episode.required:
        out.append(_finding(ctx, episode, result, None))
        acc.episode = None
    else:
        episode.insufficient = result


def _finding(
    ctx: RuleInput,
    episode: MrdEpisode,
    cleared: StoredResult | None,
    ended: ClinicalEventRecord | None,
) -> Finding:
    policy = ctx.policy
    first, peak, latest = episode.first, episode.peak, episode.latest
    cites = [Cite(Analyte.MRD, first, "first detected MRD after day 0")]
    if peak is not None and peak != first:
        cites.append(Cite(Analyte.MRD, peak, "highest MRD level of the episode"))
    if latest not in (first, peak):
        cites.append(Cite(Analyte.MRD, latest, "latest detected MRD"))
    insufficient = episode.insufficient if cleared is None else None
    if insufficient is not None:
        cites.append(
            Cite(
                Analyte.MRD,
                insufficient,
                "not detected by a less sensitive assay: does not resolve",
            )
        )
    if cleared is not None:
        cites.append(
            Cite(Analyte.MRD, cleared, "MRD not detected by an assay at least as sensitive")
        )
    resolved_at = cleared.collected_at if cleared is not None else (ended.at if ended else None)

    def texts() -> Texts:
        summary = (
            f"MRD detected on day {ctx.day_of(first)} after CAR T-cell infusion: "
            f"{describe(policy, first)}."
        )
        if peak is not None and peak != first:
            summary += f" Highest level {mrd_level(peak)} on day {ctx.day_of(peak)}."
        if insufficient is not None:
            summary += (
                f" MRD not detected on day {ctx.day_of(insufficient)} "
                f"({describe(policy, insufficient)}): not detected at "
                f"{power_of_ten(sensitivity(policy, insufficient, False))} does not exclude the "
                f"{_method_name(episode.required_method)}-detected disease (sensitivity "
                f"{power_of_ten(episode.required)})."
            )
        summary += ctx.risk_sentence()
        if cleared is not None:
            summary += (
                f" Resolved: MRD not detected on day {ctx.day_of(cleared)} "
                f"({describe(policy, cleared)})."
            )
        elif ended is not None:
            summary += f" Resolved: {course_sentence(ctx, ended)}."
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=(
                "Any detected MRD after day 0 (flow, qPCR or NGS), including below the limit of "
                "quantification; resolved only by a negative at least as sensitive as the "
                "assay that detected it (unknown: flow/qPCR "
                f"{power_of_ten(policy.mrd_sensitivity_flow)}, NGS "
                f"{power_of_ten(policy.mrd_sensitivity_ngs)})"
            ),
        )

    # a late result can move the highest level without changing how often the level rose, and a
    # cancelled rise can be replaced by a later one: the alert then names other results, which is
    # new evidence too
    level = f"rises={episode.rises}"
    if episode.rose_at:
        level += "@" + ",".join(f"{moment.timestamp():.0f}" for moment in episode.rose_at)
    if peak is not None:
        level += f"|peak@{peak.collected_ts:.0f}={peak.value}"
    # the signature names the insufficient negative even once cleared: a resolution is not an
    # update of the evidence
    weak = episode.insufficient
    shown = "" if weak is None else f"|insufficient@{weak.collected_ts:.0f}"
    return Finding(
        rule=RuleName.MRD_POSITIVE,
        episode_key=episode_key(first.collected_at),
        episode_start=first.collected_at,
        severity=Severity.CRITICAL,
        raised_at=first.collected_at,
        resolved_at=resolved_at,
        signature=level + shown,
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
        context=ctx.risk_context(),
    )


RULE = MrdPositiveRule()
