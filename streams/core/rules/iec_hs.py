"""IEC-HS pattern (``iec_hs``): immune-effector cell-associated HLH-like syndrome.

Sources: Westhafen 2025, "Immune-effector cell associated HLH-like syndrome (IEC-HS)"; ASTCT
consensus (Hines et al., Transplant Cell Ther 2023).

- Timing: only results collected on day ``iec_hs_earliest_day`` (7) or later count, or earlier
  once a ``crs_resolved`` clinical event has been recorded (results at or after it).
- Ferritin criterion, for a counting ferritin: > 2 × baseline (the last ferritin on or before day
  0; without one > 2 × ULN 300 ng/mL), or ≥ 2-fold rise over any earlier ferritin within 72 h. The
  earlier value of a rise may predate the timing window: it is the comparator, not the finding.
- Supporting categories, from counting results within ±7 days of a ferritin that meets the
  criterion, each counted once: cytopenia (ANC or platelets fallen ≥ 50 % from their highest
  counting value in the preceding 7 days), hypofibrinogenemia (< 150 mg/dL), transaminitis
  (ALT or AST > 5 × ULN 40 U/L), hypertriglyceridemia (> 265 mg/dL). LDH > ULN 250 U/L is
  context only.
- Critical when the ferritin criterion and ≥ 1 category hold (at the collection time at which both
  are known); ``updated`` as categories join; resolved when a ferritin falls below 50 % of the
  episode's peak. A new episode needs a ferritin after the resolution ≥ 2 × the lowest ferritin
  since the resolution (and the criteria again).
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from schemas.vocab import Analyte, ClinicalEventKind, RuleName, Severity
from streams.core.policy import Policy
from streams.core.rules.base import REVIEW, Cite, Finding, RuleInput, Texts, episode_key
from streams.core.state import StoredResult

REFERENCES = (
    f"{REVIEW} -- section 'Immune-effector cell associated HLH-like syndrome (IEC-HS)'",
    "ASTCT IEC-HS consensus: Hines et al., Transplant Cell Ther 2023",
)
RECOMMENDATION = (
    "Evaluate for IEC-HS; ASTCT suggests a stepwise approach: anakinra ± glucocorticoids, then "
    "ruxolitinib, emapalumab or low-dose etoposide."
)
CYTOPENIA = "new or worsening cytopenia"
FIBRINOGEN = "hypofibrinogenemia"
TRANSAMINITIS = "transaminitis"
TRIGLYCERIDES = "hypertriglyceridemia"
SUPPORT_ANALYTES = (
    Analyte.ANC,
    Analyte.PLATELETS,
    Analyte.FIBRINOGEN,
    Analyte.ALT,
    Analyte.AST,
    Analyte.TRIGLYCERIDES,
)


@dataclass
class _Episode:
    ferritins: list[Cite] = field(default_factory=list)
    supports: dict[str, Cite] = field(default_factory=dict)
    raised_at: datetime | None = None
    peak: StoredResult | None = None
    latest: StoredResult | None = None
    resolved_by: StoredResult | None = None
    resolved_at: datetime | None = None

    def has_fallen(self, ferritin: StoredResult, fraction: float) -> bool:
        assert self.peak is not None
        return (ferritin.value or 0.0) < fraction * (self.peak.value or 0.0)


@dataclass(frozen=True)
class IecHsRule:
    name: RuleName = RuleName.IEC_HS
    #: LDH is context only (read when another result triggers): it never changes a finding
    analytes: frozenset[Analyte] = frozenset({Analyte.FERRITIN, *SUPPORT_ANALYTES})
    events: frozenset[str] = frozenset({ClinicalEventKind.CRS_RESOLVED.value})
    depends_on: frozenset[RuleName] = frozenset()

    def may_change(self, ctx: RuleInput, analyte: Analyte, result: StoredResult) -> bool:
        """A supporting result matters only near a ferritin: within the ±7-day support window
        of it, plus the 7-day cytopenia look-back through which it can change a later result."""
        if analyte is Analyte.FERRITIN:
            return True
        p = ctx.policy
        reach = 86400 * (p.iec_hs_support_window_days + p.cytopenia_lookback_days + 1)
        low, high = result.collected_ts - reach, result.collected_ts + reach
        return any(
            low <= f.collected_ts <= high for f in ctx.state.results.get(Analyte.FERRITIN, ())
        )

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        ferritins = [r for r in ctx.results(Analyte.FERRITIN) if r.value is not None]
        if not ferritins:
            return []
        counts = _timing(ctx)
        baseline = _baseline(ctx, ferritins)
        if not _any_ferritin_criterion(ctx.policy, ferritins, baseline, counts):
            return []
        supports = _supporting_results(ctx, counts)
        episodes = _episodes(ctx.policy, ferritins, supports, baseline, counts)
        return [_finding(ctx, e, baseline) for e in episodes]


def _timing(ctx: RuleInput) -> "_Counts":
    resolved = [e.at for e in ctx.events() if e.kind is ClinicalEventKind.CRS_RESOLVED]
    return _Counts(ctx, ctx.policy.iec_hs_earliest_day, resolved[0] if resolved else None)


@dataclass
class _Counts:
    ctx: RuleInput
    earliest_day: int
    crs_resolved_at: datetime | None

    def __call__(self, result: StoredResult) -> bool:
        if self.ctx.day_of(result) >= self.earliest_day:
            return True
        return self.crs_resolved_at is not None and result.collected_at >= self.crs_resolved_at


def _baseline(ctx: RuleInput, ferritins: list[StoredResult]) -> StoredResult | None:
    before = [r for r in ferritins if ctx.day_of(r) <= 0]
    return before[-1] if before else None


def _any_ferritin_criterion(
    policy: Policy, ferritins: list[StoredResult], baseline: StoredResult | None, counts: "_Counts"
) -> bool:
    """Cheap pre-check: does any counting ferritin meet the criterion at all?"""
    return any(
        counts(f) and _meets_ferritin(policy, f, ferritins[:i], baseline) is not None
        for i, f in enumerate(ferritins)
    )


def _supporting_results(ctx: RuleInput, counts: _Counts) -> list[tuple[str, Cite]]:
    """Counting results that satisfy a supporting category on their own, in time order."""
    policy = ctx.policy
    found: list[tuple[str, Cite]] = []
    for analyte in (Analyte.ANC, Analyte.PLATELETS):
        history = [r for r in ctx.results(analyte) if r.value is not None and counts(r)]
        for index, result in enumerate(history):
            window = result.collected_at - timedelta(days=policy.cytopenia_lookback_days)
            earlier = [r for r in history[:index] if r.collected_at >= window]
            if not earlier:
                continue
            peak = max(earlier, key=lambda r: r.value or 0.0)
            if (result.value or 0.0) <= (1 - policy.cytopenia_fall_fraction) * (peak.value or 0.0):
                found.append((CYTOPENIA, Cite(analyte, result, f"fell ≥ 50 % from {peak.value:g}")))
    checks = (
        (Analyte.FIBRINOGEN, FIBRINOGEN, lambda v: v < policy.fibrinogen_low_mg_dl),
        (
            Analyte.ALT,
            TRANSAMINITIS,
            lambda v: v > policy.transaminase_multiple * policy.transaminase_uln_u_l,
        ),
        (
            Analyte.AST,
            TRANSAMINITIS,
            lambda v: v > policy.transaminase_multiple * policy.transaminase_uln_u_l,
        ),
        (Analyte.TRIGLYCERIDES, TRIGLYCERIDES, lambda v: v > policy.triglycerides_high_mg_dl),
    )
    for analyte, category, meets in checks:
        for result in ctx.results(analyte):
            if result.value is not None and counts(result) and meets(result.value):
                found.append((category, Cite(analyte, result, category)))
    found.sort(key=lambda item: item[1].result.collected_at)
    return found


def _meets_ferritin(
    policy: Policy, result: StoredResult, earlier: list[StoredResult], baseline: StoredResult | None
) -> str | None:
    value = result.value or 0.0
    reference = baseline.value if baseline is not None else policy.ferritin_uln_ng_ml
    if value > policy.ferritin_baseline_multiple * (reference or 0.0):
        if baseline is None:
            return f"> {policy.ferritin_baseline_multiple:g} × ULN ({policy.ferritin_uln_ng_ml:g} ng/mL)"
        return f"> {policy.ferritin_baseline_multiple:g} × baseline ({baseline.value:g} ng/mL)"
    window = result.collected_at - timedelta(hours=policy.ferritin_rise_window_hours)
    for prior in earlier:
        if (
            prior.collected_at >= window
            and prior.value
            and value >= policy.ferritin_rise_multiple * prior.value
        ):
            return f"≥ {policy.ferritin_rise_multiple:g}-fold rise from {prior.value:g} ng/mL within 72 h"
    return None


def _episodes(
    policy: Policy,
    ferritins: list[StoredResult],
    supports: list[tuple[str, Cite]],
    baseline: StoredResult | None,
    counts: _Counts,
) -> list[_Episode]:
    """Walk ferritins and supporting results in collection order; see the module docstring."""
    window = timedelta(days=policy.iec_hs_support_window_days)
    timeline: list[tuple[datetime, int, StoredResult | None, tuple[str, Cite] | None]] = [
        (f.collected_at, 0, f, None) for f in ferritins
    ] + [(s[1].result.collected_at, 1, None, s) for s in supports]
    timeline.sort(key=lambda item: (item[0], item[1]))
    episodes: list[_Episode] = []
    current = _Episode()
    lowest_since_resolution: float | None = None
    seen_supports: list[tuple[str, Cite]] = []
    earlier_ferritins: list[StoredResult] = []
    fraction = policy.iec_hs_resolve_fraction
    for at, _, ferritin, support in timeline:
        if support is not None:
            seen_supports.append(support)
        if ferritin is not None:
            value = ferritin.value or 0.0
            if current.peak is not None:
                current.latest = ferritin
            if current.raised_at is not None:
                assert current.peak is not None
                if value > (current.peak.value or 0.0):
                    current.peak = ferritin
                elif current.has_fallen(ferritin, fraction):
                    current.resolved_by, current.resolved_at = ferritin, at
                    episodes.append(current)
                    current = _Episode()
                    lowest_since_resolution = value
                    earlier_ferritins.append(ferritin)
                    continue
            eligible = (
                lowest_since_resolution is None
                or current.raised_at is not None
                or (value >= policy.iec_hs_new_episode_multiple * lowest_since_resolution)
            )
            why = _meets_ferritin(policy, ferritin, earlier_ferritins, baseline)
            if eligible and why is not None and counts(ferritin):
                current.ferritins.append(Cite(Analyte.FERRITIN, ferritin, f"ferritin {why}"))
                if current.peak is None or value > (current.peak.value or 0.0):
                    current.peak = ferritin
            if lowest_since_resolution is not None and current.raised_at is None:
                lowest_since_resolution = min(lowest_since_resolution, value)
            earlier_ferritins.append(ferritin)
        joined = False
        for category, cite in seen_supports:
            if category in current.supports:
                continue
            if any(
                abs(cite.result.collected_at - f.result.collected_at) <= window
                for f in current.ferritins
            ):
                current.supports[category] = cite
                joined = True
        if joined:
            if current.raised_at is None:
                current.raised_at = at
            # the pattern completed only after ferritin had already halved: raised and resolved
            latest = current.latest
            if latest is not None and current.has_fallen(latest, fraction):
                current.resolved_by, current.resolved_at = latest, at
                episodes.append(current)
                current = _Episode()
                lowest_since_resolution = latest.value or 0.0
    if current.raised_at is not None:
        episodes.append(current)
    return episodes


def _finding(ctx: RuleInput, episode: _Episode, baseline: StoredResult | None) -> Finding:
    assert episode.raised_at is not None
    assert episode.peak is not None
    policy = ctx.policy
    first = episode.ferritins[0]
    cites = [first]
    if baseline is not None:
        cites.insert(
            0, Cite(Analyte.FERRITIN, baseline, "baseline ferritin (last on or before day 0)")
        )
    if episode.peak is not first.result:
        cites.append(Cite(Analyte.FERRITIN, episode.peak, "peak ferritin of the episode"))
    cites += list(episode.supports.values())
    if episode.resolved_by is not None:
        cites.append(Cite(Analyte.FERRITIN, episode.resolved_by, "ferritin < 50 % of peak"))
    ldh = [
        Cite(Analyte.LDH, r, "LDH above ULN (context, not counted)")
        for r in ctx.results(Analyte.LDH)
        if r.value is not None
        and r.value > policy.ldh_uln_u_l
        and abs(r.collected_at - first.result.collected_at)
        <= timedelta(days=policy.iec_hs_support_window_days)
    ]
    categories = sorted(episode.supports)
    start = episode.raised_at
    peak = episode.peak

    def texts() -> Texts:
        summary = (
            f"IEC-HS pattern: ferritin {first.result.value:g} ng/mL on day "
            f"{ctx.day_of(first.result)} ({first.note.removeprefix('ferritin ') if first.note else ''}) "
            f"with {', '.join(categories)}; peak ferritin {peak.value:g} ng/mL."
        )
        if ldh:
            summary += f" LDH above {policy.ldh_uln_u_l:g} U/L (context)."
        if episode.resolved_by is not None:
            summary += (
                f" Resolved: ferritin {episode.resolved_by.value:g} ng/mL on day "
                f"{ctx.day(episode.resolved_by.collected_at)} (< 50 % of peak)."
            )
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=(
                f"From day {policy.iec_hs_earliest_day} (or after CRS resolved): ferritin > "
                f"{policy.ferritin_baseline_multiple:g} × baseline (else × ULN "
                f"{policy.ferritin_uln_ng_ml:g} ng/mL) or ≥ {policy.ferritin_rise_multiple:g}-fold "
                f"within {policy.ferritin_rise_window_hours:g} h, plus ≥ 1 within ±"
                f"{policy.iec_hs_support_window_days:g} days: ANC/platelets fall ≥ 50 %, fibrinogen "
                f"< {policy.fibrinogen_low_mg_dl:g} mg/dL, ALT/AST > "
                f"{policy.transaminase_multiple:g} × {policy.transaminase_uln_u_l:g} U/L, "
                f"triglycerides > {policy.triglycerides_high_mg_dl:g} mg/dL"
            ),
        )

    return Finding(
        rule=RuleName.IEC_HS,
        episode_key=episode_key(start),
        episode_start=start,
        severity=Severity.CRITICAL,
        raised_at=episode.raised_at,
        resolved_at=episode.resolved_at,
        signature="+".join(categories),
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
        context=tuple(ldh),
    )


RULE = IecHsRule()
