"""IEC-HS pattern (``iec_hs``) -- docs/clinical-spec.md section 4.

Sources: Westhafen 2025, "Immune-effector cell associated Hemophagocytic Lymphohistiocytosis
(HLH)-like syndrome (IEC-HS)"; ASTCT consensus (Hines MR, et al. Transplant Cell Ther
2023;29(7):438.e1-438.e16).

- Timing: only results collected on day ``iec_hs_earliest_day`` (7) or later count, or earlier
  once a ``crs_resolved`` clinical event has been recorded (results collected at or after it).
- Ferritin criterion, for a counting ferritin: > 2 × baseline (the last ferritin on or before day
  0; without one > 2 × ULN 300 ng/mL), or ≥ 2-fold rise over an earlier ferritin within 72 h
  (elapsed hours). Both ferritins of a rise count under the timing rule (a rise from a day-5
  value is the CRS, as a fall from a day-5 count is the lymphodepletion); the baseline is the one
  exception the rule names. A censored ``> 40000 ng/mL`` counts with its limit.
- Supporting categories, from counting results within 7 days (day numbers) before or after a
  criterion ferritin, each counted once: cytopenia (ANC or platelets fallen ≥ 50 % from their
  highest counting value in the preceding 7 days *and* by at least 250 /µL or 25 × 10³/µL --
  rev. 2: noise within a profound aplasia is not a new cytopenia), hypofibrinogenemia
  (< 150 mg/dL), transaminitis (ALT or AST > 5 × ULN 40 U/L), hypertriglyceridemia
  (> 265 mg/dL). LDH > ULN 250 U/L is context only.
- The episode -- and so its peak -- starts at the first criterion ferritin with a supporting
  category within 7 days (rev. 2); an earlier criterion ferritin without support is context, not
  the peak. Critical at the collection time at which both are known; ``updated`` as categories
  join; resolved when a ferritin falls below 50 % of the episode's peak (a pattern completed only
  after ferritin had already halved is raised and resolved), or at ``end_of_follow_up``.
- A new episode needs a ferritin after the resolution at ≥ 2 × the lowest ferritin since the
  resolution (the resolving one included), and the criteria again.
- Two ferritins of one specimen are one observation, read as the higher (decision: the
  conservative reading for a syndrome defined by hyperferritinemia).
- The accumulator keeps the baseline, the open episode and the last 7 days of ferritins,
  candidates and supporting results, so pruning loses nothing.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from schemas.vocab import Analyte, ClinicalEventKind, RuleName, Severity
from streams.core.policy import Policy
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
    Specimen,
    Texts,
    course_sentence,
    episode_key,
)
from streams.core.state import ClinicalEventRecord, StoredResult
from streams.core.text import labelled, number, quantity

REFERENCES = (
    f"{REVIEW} -- section 'Immune-effector cell associated Hemophagocytic Lymphohistiocytosis "
    "(HLH)-like syndrome (IEC-HS)': \"published ASTCT working group treatment recommendations "
    "include a patient-tailored stepwise approach with anakinra with or without glucocorticoids, "
    'followed by ruxolitinib, emapalumab or low-dose etoposide"',
    "ASTCT IEC-HS consensus: Hines MR, et al. Immune Effector Cell-Associated Hemophagocytic "
    "Lymphohistiocytosis-Like Syndrome. Transplant Cell Ther 2023;29(7):438.e1-438.e16",
)
RECOMMENDATION = (
    "Evaluate for IEC-HS; the ASTCT working group recommends a patient-tailored stepwise "
    "approach: anakinra with or without glucocorticoids, followed by ruxolitinib, emapalumab or "
    "low-dose etoposide."
)
CYTOPENIA = "new or worsening cytopenia"
FIBRINOGEN = "hypofibrinogenemia"
TRANSAMINITIS = "transaminitis"
TRIGLYCERIDES = "hypertriglyceridemia"
SUPPORT_ANALYTES = frozenset(
    {
        Analyte.ANC,
        Analyte.PLATELETS,
        Analyte.FIBRINOGEN,
        Analyte.ALT,
        Analyte.AST,
        Analyte.TRIGLYCERIDES,
    }
)


@dataclass
class Flag:
    """A ferritin meeting the criterion, or a result meeting a supporting category."""

    category: str
    analyte: Analyte
    result: StoredResult
    note: str


@dataclass
class IecEpisode:
    start: Flag
    raised_at: datetime
    peak: StoredResult
    latest: StoredResult
    #: criterion ferritins of the last 7 days (supports within 7 days of one join)
    criteria: list[Flag]
    supports: dict[str, Flag]
    ldh: list[StoredResult] = field(default_factory=list)


@dataclass
class IecAcc:
    baseline: StoredResult | None = None
    crs_resolved_at: datetime | None = None
    #: ferritins of the last 7 days (rise comparators, the peak of a starting episode)
    ferritins: list[StoredResult] = field(default_factory=list)
    #: criterion ferritins of the last 7 days, waiting for a supporting category
    candidates: list[Flag] = field(default_factory=list)
    #: supporting results of the last 7 days
    supports: list[Flag] = field(default_factory=list)
    #: counting ANC and platelet results of the last 7 days (cytopenia look-back)
    counts: list[tuple[Analyte, StoredResult]] = field(default_factory=list)
    #: LDH above ULN of the last 7 days (context)
    ldh: list[StoredResult] = field(default_factory=list)
    episode: IecEpisode | None = None
    lowest_since_resolution: float | None = None
    stopped: ClinicalEventRecord | None = None


class IecHsRule(ScanRule[IecAcc]):
    name = RuleName.IEC_HS
    reads = Reads(
        analytes=frozenset({Analyte.FERRITIN, Analyte.LDH, *SUPPORT_ANALYTES}),
        events=frozenset({ClinicalEventKind.CRS_RESOLVED, END_OF_FOLLOW_UP}),
        settings=(
            "iec_hs_earliest_day",
            "ferritin_uln_ng_ml",
            "ferritin_baseline_multiple",
            "ferritin_rise_multiple",
            "ferritin_rise_window_hours",
            "iec_hs_support_window_days",
            "cytopenia_fall_fraction",
            "cytopenia_lookback_days",
            "cytopenia_min_fall_anc_per_ul",
            "cytopenia_min_fall_plt_k_per_ul",
            "fibrinogen_low_mg_dl",
            "transaminase_uln_u_l",
            "transaminase_multiple",
            "triglycerides_high_mg_dl",
            "ldh_uln_u_l",
            "iec_hs_resolve_fraction",
            "iec_hs_new_episode_multiple",
        ),
    )
    acc_type = IecAcc

    def feed(self, ctx: RuleInput, acc: IecAcc, item: Item, out: list[Finding]) -> None:
        if acc.stopped is not None:
            return
        if isinstance(item, Course):
            if item.kind is ClinicalEventKind.CRS_RESOLVED and acc.crs_resolved_at is None:
                acc.crs_resolved_at = item.at
            elif item.kind is END_OF_FOLLOW_UP:
                if acc.episode is not None:
                    out.append(_finding(ctx, acc, acc.episode, None, item.event))
                acc.episode = None
                acc.stopped = item.event
            return
        _forget_old(ctx, acc, item)
        new_supports = _supports(ctx, acc, item)
        acc.supports += new_supports
        ferritin = item.highest(Analyte.FERRITIN)
        if ferritin is not None:
            _ferritin(ctx, acc, ferritin, item.day, out)
        _join(ctx, acc, item, out)

    def open_findings(self, ctx: RuleInput, acc: IecAcc) -> list[Finding]:
        return [] if acc.episode is None else [_finding(ctx, acc, acc.episode, None, None)]


def _counts(ctx: RuleInput, acc: IecAcc, result: StoredResult) -> bool:
    if ctx.day_of(result) >= ctx.policy.iec_hs_earliest_day:
        return True
    return acc.crs_resolved_at is not None and result.collected_at >= acc.crs_resolved_at


def _forget_old(ctx: RuleInput, acc: IecAcc, item: Specimen) -> None:
    window = ctx.policy.iec_hs_support_window_days
    lookback = ctx.policy.cytopenia_lookback_days

    def recent(result: StoredResult, days: int) -> bool:
        return item.day - ctx.day_of(result) <= days

    # every list is in collection order: drop from the front while too old
    while acc.ferritins and not recent(acc.ferritins[0], window):
        del acc.ferritins[0]
    while acc.candidates and not recent(acc.candidates[0].result, window):
        del acc.candidates[0]
    while acc.supports and not recent(acc.supports[0].result, window):
        del acc.supports[0]
    while acc.counts and not recent(acc.counts[0][1], lookback):
        del acc.counts[0]
    while acc.ldh and not recent(acc.ldh[0], window):
        del acc.ldh[0]
    criteria = acc.episode.criteria if acc.episode is not None else []
    while criteria and not recent(criteria[0].result, window):
        del criteria[0]


def _supports(ctx: RuleInput, acc: IecAcc, item: Specimen) -> list[Flag]:
    """This specimen's counting results that meet a supporting category on their own."""
    p = ctx.policy
    found: list[Flag] = []
    transaminase_limit = p.transaminase_multiple * p.transaminase_uln_u_l
    for analyte, result in item.results:
        value = result.value
        if value is None or not _counts(ctx, acc, result):
            continue
        if analyte in (Analyte.ANC, Analyte.PLATELETS):
            flag = _cytopenia(ctx, acc, analyte, result)
            acc.counts.append((analyte, result))
        elif analyte is Analyte.FIBRINOGEN and value < p.fibrinogen_low_mg_dl:
            flag = Flag(
                FIBRINOGEN, analyte, result, f"below {number(p.fibrinogen_low_mg_dl)} mg/dL"
            )
        elif analyte in (Analyte.ALT, Analyte.AST) and value > transaminase_limit:
            flag = Flag(TRANSAMINITIS, analyte, result, f"above {number(transaminase_limit)} U/L")
        elif analyte is Analyte.TRIGLYCERIDES and value > p.triglycerides_high_mg_dl:
            note = f"above {number(p.triglycerides_high_mg_dl)} mg/dL"
            flag = Flag(TRIGLYCERIDES, analyte, result, note)
        elif analyte is Analyte.LDH and value > p.ldh_uln_u_l:
            acc.ldh.append(result)
            if acc.episode is not None and _near(ctx, result, acc.episode.start.result):
                acc.episode.ldh.append(result)
            flag = None
        else:
            flag = None
        if flag is not None:
            found.append(flag)
    return found


def _cytopenia(ctx: RuleInput, acc: IecAcc, analyte: Analyte, result: StoredResult) -> Flag | None:
    p = ctx.policy
    earlier = [r for a, r in acc.counts if a is analyte]
    if not earlier:
        return None
    peak = max(earlier, key=lambda r: r.value or 0.0)
    high, value = peak.value or 0.0, result.value or 0.0
    floor = (
        p.cytopenia_min_fall_anc_per_ul
        if analyte is Analyte.ANC
        else p.cytopenia_min_fall_plt_k_per_ul
    )
    if value > (1 - p.cytopenia_fall_fraction) * high or high - value < floor:
        return None
    unit = "/µL" if analyte is Analyte.ANC else "× 10³/µL"
    note = (
        f"fell from {quantity(analyte, peak)} (day {ctx.day_of(peak)}, accession "
        f"{peak.accession or 'none'}): by ≥ {p.cytopenia_fall_fraction:.0%} and ≥ "
        f"{number(floor)} {unit}"
    )
    return Flag(CYTOPENIA, analyte, result, note)


def _criterion(ctx: RuleInput, acc: IecAcc, result: StoredResult) -> str | None:
    """Why a ferritin meets the criterion (comparison value with its day and accession)."""
    p = ctx.policy
    value = result.value or 0.0
    baseline = acc.baseline
    if baseline is not None:
        if value > p.ferritin_baseline_multiple * (baseline.value or 0.0):
            return (
                f"> {p.ferritin_baseline_multiple:g} × baseline ({quantity(Analyte.FERRITIN, baseline)} "
                f"on day {ctx.day_of(baseline)}, accession {baseline.accession or 'none'})"
            )
    elif value > p.ferritin_baseline_multiple * p.ferritin_uln_ng_ml:
        return f"> {p.ferritin_baseline_multiple:g} × ULN ({number(p.ferritin_uln_ng_ml)} ng/mL; no baseline)"
    window = result.collected_at - timedelta(hours=p.ferritin_rise_window_hours)
    for prior in acc.ferritins:
        if (
            prior.collected_at >= window
            and _counts(ctx, acc, prior)
            and prior.value
            and value >= p.ferritin_rise_multiple * prior.value
        ):
            return (
                f"≥ {p.ferritin_rise_multiple:g}-fold rise within {p.ferritin_rise_window_hours:g} h "
                f"from {quantity(Analyte.FERRITIN, prior)} (day {ctx.day_of(prior)}, accession "
                f"{prior.accession or 'none'})"
            )
    return None


def _ferritin(
    ctx: RuleInput, acc: IecAcc, result: StoredResult, day: int, out: list[Finding]
) -> None:
    p = ctx.policy
    value = result.value or 0.0
    if day <= 0:
        acc.baseline = result
    episode = acc.episode
    why = _criterion(ctx, acc, result) if _counts(ctx, acc, result) else None
    acc.ferritins.append(result)
    if episode is not None:
        episode.latest = result
        if value > (episode.peak.value or 0.0):
            episode.peak = result
        elif value < p.iec_hs_resolve_fraction * (episode.peak.value or 0.0):
            out.append(_finding(ctx, acc, episode, result, None))
            acc.episode = None
            acc.lowest_since_resolution = value
            return
        if why is not None:
            episode.criteria.append(Flag("ferritin", Analyte.FERRITIN, result, why))
        return
    lowest = acc.lowest_since_resolution
    eligible = lowest is None or value >= p.iec_hs_new_episode_multiple * lowest
    if lowest is not None:
        acc.lowest_since_resolution = min(lowest, value)
    if eligible and why is not None:
        acc.candidates.append(Flag("ferritin", Analyte.FERRITIN, result, why))


def _near(ctx: RuleInput, a: StoredResult, b: StoredResult) -> bool:
    return abs(ctx.day_of(a) - ctx.day_of(b)) <= ctx.policy.iec_hs_support_window_days


def _join(ctx: RuleInput, acc: IecAcc, item: Specimen, out: list[Finding]) -> None:
    episode = acc.episode
    if episode is not None:
        for support in acc.supports:
            if support.category not in episode.supports and any(
                _near(ctx, support.result, c.result) for c in episode.criteria
            ):
                episode.supports[support.category] = support
        return
    for candidate in acc.candidates:
        near = [s for s in acc.supports if _near(ctx, s.result, candidate.result)]
        if near:
            _start(ctx, acc, candidate, item, out)
            return


def _start(
    ctx: RuleInput, acc: IecAcc, candidate: Flag, item: Specimen, out: list[Finding]
) -> None:
    start_at = candidate.result.collected_at
    criteria = [c for c in acc.candidates if c.result.collected_at >= start_at]
    since = [r for r in acc.ferritins if r.collected_at >= start_at]
    peak = max(since, key=lambda r: r.value or 0.0)
    episode = IecEpisode(
        start=candidate,
        raised_at=item.at,
        peak=peak,
        latest=since[-1],
        criteria=criteria,
        supports={},
        ldh=[r for r in acc.ldh if _near(ctx, r, candidate.result)],
    )
    for support in acc.supports:
        if support.category not in episode.supports and any(
            _near(ctx, support.result, c.result) for c in criteria
        ):
            episode.supports[support.category] = support
    acc.candidates = []
    acc.episode = episode
    latest = episode.latest
    if (latest.value or 0.0) < ctx.policy.iec_hs_resolve_fraction * (peak.value or 0.0):
        # the pattern completed only after ferritin had already halved: raised and resolved
        out.append(_finding(ctx, acc, episode, latest, None, resolved_at=item.at))
        acc.episode = None
        acc.lowest_since_resolution = latest.value or 0.0


def _finding(
    ctx: RuleInput,
    acc: IecAcc,
    episode: IecEpisode,
    resolved_by: StoredResult | None,
    ended: ClinicalEventRecord | None,
    resolved_at: datetime | None = None,
) -> Finding:
    policy = ctx.policy
    start, peak = episode.start, episode.peak
    cites: list[Cite] = []
    baseline = acc.baseline
    if baseline is not None:
        cites.append(
            Cite(Analyte.FERRITIN, baseline, "baseline ferritin (last on or before day 0)")
        )
    cites.append(Cite(Analyte.FERRITIN, start.result, f"episode start: ferritin {start.note}"))
    if peak != start.result:
        cites.append(Cite(Analyte.FERRITIN, peak, "peak ferritin of the episode"))
    supports = [episode.supports[c] for c in sorted(episode.supports)]
    cites += [Cite(s.analyte, s.result, f"{s.category}: {s.note}") for s in supports]
    if resolved_by is not None:
        cites.append(Cite(Analyte.FERRITIN, resolved_by, "ferritin < 50 % of the episode's peak"))
    context = tuple(
        Cite(Analyte.LDH, r, "LDH above ULN (context, not counted)") for r in episode.ldh
    )
    categories = sorted(episode.supports)
    if resolved_at is None:
        resolved_at = (
            resolved_by.collected_at
            if resolved_by is not None
            else (ended.at if ended is not None else None)
        )

    def texts() -> Texts:
        support_text = "; ".join(
            f"{s.category} ({labelled(s.analyte, s.result)} on day {ctx.day_of(s.result)}, "
            f"{s.note})"
            for s in supports
        )
        summary = (
            f"IEC-HS pattern: {labelled(Analyte.FERRITIN, start.result)} on day "
            f"{ctx.day_of(start.result)} {start.note}, with {support_text}; peak "
            f"{labelled(Analyte.FERRITIN, peak)} on day {ctx.day_of(peak)}."
        )
        if episode.ldh:
            summary += f" LDH above {number(policy.ldh_uln_u_l)} U/L (context)."
        if resolved_by is not None:
            summary += (
                f" Resolved: {labelled(Analyte.FERRITIN, resolved_by)} on day "
                f"{ctx.day_of(resolved_by)} (< {policy.iec_hs_resolve_fraction:.0%} of the peak)."
            )
        elif ended is not None:
            summary += f" Resolved: {course_sentence(ctx, ended)}."
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=_threshold_text(policy),
        )

    return Finding(
        rule=RuleName.IEC_HS,
        episode_key=episode_key(start.result.collected_at),
        episode_start=start.result.collected_at,
        severity=Severity.CRITICAL,
        raised_at=episode.raised_at,
        resolved_at=resolved_at,
        signature="+".join(categories),
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
        context=context,
    )


def _threshold_text(policy: Policy) -> str:
    return (
        f"From day {policy.iec_hs_earliest_day} (or after CRS resolved): ferritin > "
        f"{policy.ferritin_baseline_multiple:g} × baseline (else × ULN "
        f"{number(policy.ferritin_uln_ng_ml)} ng/mL) or ≥ {policy.ferritin_rise_multiple:g}-fold "
        f"within {policy.ferritin_rise_window_hours:g} h, plus ≥ 1 within ±"
        f"{policy.iec_hs_support_window_days} days: ANC/platelets fall ≥ "
        f"{policy.cytopenia_fall_fraction:.0%} (and ≥ {number(policy.cytopenia_min_fall_anc_per_ul)} "
        f"/µL or ≥ {number(policy.cytopenia_min_fall_plt_k_per_ul)} × 10³/µL), fibrinogen < "
        f"{number(policy.fibrinogen_low_mg_dl)} mg/dL, ALT/AST > {policy.transaminase_multiple:g} "
        f"× {number(policy.transaminase_uln_u_l)} U/L, triglycerides > "
        f"{number(policy.triglycerides_high_mg_dl)} mg/dL; resolved below "
        f"{policy.iec_hs_resolve_fraction:.0%} of the peak"
    )


RULE = IecHsRule()
