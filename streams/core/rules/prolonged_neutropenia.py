"""Prolonged neutropenia / ICAHT (``prolonged_neutropenia``).

Sources: Westhafen 2025, "Immune effector cell-associated hematotoxicity (ICAHT)"; EHA/EBMT ICAHT
consensus grading (Rejeski et al., Blood 2023;142:865).

Episodes: one opens at an ANC ≤ 500 /µL (day ≥ 0) when none is open, and closes at *stable
recovery*: a run of consecutive ANC results all > 500 with at least two results spanning at least 3
calendar days (first and last day inclusive, matching the "stretch lasting 3 days" of the early
count).

Early ICAHT (days 0-30), per episode, cumulative: each day from the episode's first ANC up to the day
of the latest ANC (never beyond, never past day 30) takes the ANC in effect (lowest result of that
day, else the last earlier result). Grade by the worse column: ≤ 500 for 1-6 days → 1, 7-13 → 2,
14-30 → 3, all 31 days 0-30 → 4; ≤ 100 for 7-13 days → 3, ≥ 14 → 4. A stretch above 500 of < 3 days
between two neutropenic days counts in the ≤ 500 column ("non-stable recovery").

Late ICAHT (after day 30): the two most recent consecutive ANC results, both after day 30, the less
severe setting the grade: ≤ 1500 → 1, ≤ 1000 → 2, ≤ 500 → 3, ≤ 100 → 4.

The episode's grade is the highest early or late grade reached while it is open. Alert at
``Policy.icaht_alert_grade`` (default 3; grade ≥ 3 critical, lower grades warning), ``updated`` when
the grade rises, resolved at stable recovery. The platelet (T-ICAHT) early grade is context:
< 50 × 10³/µL for 1-6 days → 1, ≥ 7 → 2; < 20 × 10³/µL for 1-13 days → 3, ≥ 14 → 4.
"""

from dataclasses import dataclass, field
from datetime import datetime

from schemas.vocab import Analyte, RuleName, Severity
from streams.core.policy import Policy
from streams.core.rules.base import (
    REVIEW,
    Cite,
    Finding,
    RuleInput,
    Texts,
    episode_key,
)
from streams.core.state import StoredResult

REFERENCES = (
    f"{REVIEW} -- section 'Immune effector cell-associated hematotoxicity (ICAHT)'",
    "EHA/EBMT ICAHT consensus grading: Rejeski et al., Blood 2023;142:865",
)
RECOMMENDATION = (
    "Supportive care; consider G-CSF or thrombopoietin-receptor agonists; with prior HCT and "
    "severe persistent cytopenia, a CD34+ selected stem-cell boost. Prolonged cytopenia "
    "(30-90 days) occurs in a subset; about 10 % have persistent cytopenia at one year."
)

Dated = tuple[int, StoredResult]  # (day number, result)


@dataclass
class NeutropeniaEpisode:
    """An episode of ANC ≤ 500 /µL, with its grade history (day ≥ 0 results only)."""

    results: list[Dated]
    recovery: Dated | None = None
    grade: int = 0
    #: first time each grade was reached: grade → (collection time, explanation)
    reached: dict[int, tuple[datetime, str]] = field(default_factory=dict)

    @property
    def start(self) -> StoredResult:
        return self.results[0][1]

    @property
    def recovery_result(self) -> StoredResult | None:
        return None if self.recovery is None else self.recovery[1]

    @property
    def last(self) -> StoredResult:
        return self.results[-1][1]

    def reach(self, grade: int, at: datetime, why: str) -> None:
        if grade > self.grade:
            for g in range(self.grade + 1, grade + 1):
                self.reached.setdefault(g, (at, why))
            self.grade = grade


def neutropenia_episodes(ctx: RuleInput) -> list[NeutropeniaEpisode]:
    """All ANC ≤ 500 episodes on the current history, graded (shared with ``monitoring_gap``)."""
    return ctx.memo("neutropenia_episodes", lambda: _episodes(ctx))


def _episodes(ctx: RuleInput) -> list[NeutropeniaEpisode]:
    policy = ctx.policy
    limit = policy.anc_neutropenia_per_ul
    results = ctx.results(Analyte.ANC)
    if not any(r.value is not None and r.value <= limit for r in results):
        return []
    dated = [(ctx.day_of(r), r) for r in results if r.value is not None and ctx.day_of(r) >= 0]
    episodes: list[NeutropeniaEpisode] = []
    current: NeutropeniaEpisode | None = None
    above: list[Dated] = []
    for index, item in enumerate(dated):
        _, result = item
        value = result.value or 0.0
        if current is None:
            if value <= limit:
                current = NeutropeniaEpisode(results=[item])
                above = []
                _grade_late(policy, current, dated, index)
            continue
        current.results.append(item)
        if value <= limit:
            above = []
        else:
            above.append(item)
            if (
                len(above) >= 2
                and above[-1][0] - above[0][0] + 1 >= policy.icaht_stable_recovery_days
            ):
                current.recovery = item
        _grade_late(policy, current, dated, index)
        if current.recovery is not None:
            episodes.append(current)
            current = None
            above = []
    if current is not None:
        episodes.append(current)
    for episode in episodes:
        _grade_early(policy, episode)
    return episodes


def _grade_late(
    policy: Policy, episode: NeutropeniaEpisode, dated: list[Dated], index: int
) -> None:
    if index == 0:
        return
    (day_before, before), (day, latest) = dated[index - 1], dated[index]
    if day_before <= policy.icaht_early_last_day or day <= policy.icaht_early_last_day:
        return
    less_severe = max(before.value or 0.0, latest.value or 0.0)
    grade = 0
    for g, limit in enumerate(policy.late_icaht_anc_per_ul, start=1):
        if less_severe <= limit:
            grade = g
    if grade:
        why = (
            f"late ICAHT grade {grade}: two consecutive ANC after day 30, "
            f"{before.value:g} and {latest.value:g} /µL (days {day_before}, {day})"
        )
        episode.reach(grade, latest.collected_at, why)


def _grade_early(policy: Policy, episode: NeutropeniaEpisode) -> None:
    """Cumulative early count over the episode's days within 0-30, per the consensus table."""
    last_day = min(episode.results[-1][0], policy.icaht_early_last_day)
    days = _values_by_day(episode.results, last_day)
    limit, profound = policy.anc_neutropenia_per_ul, policy.anc_profound_per_ul
    count, count_profound, stretch, seen = 0, 0, 0, False
    for day, (value, known_at) in days.items():
        if value <= limit:
            if seen and stretch < policy.icaht_nonstable_recovery_days:
                count += stretch
            count += 1
            stretch, seen = 0, True
            count_profound += value <= profound
        else:
            stretch += 1
        grade = _early_grade(count, count_profound, full=count == policy.icaht_early_last_day + 1)
        if grade:
            why = (
                f"early ICAHT grade {grade}: {count} days with ANC ≤ {limit:g} /µL and "
                f"{count_profound} days ≤ {profound:g} /µL by day {day}"
            )
            episode.reach(grade, known_at, why)


def _early_grade(days_500: int, days_100: int, full: bool) -> int:
    if full or days_100 >= 14:
        return 4
    if days_500 >= 14 or days_100 >= 7:
        return 3
    if days_500 >= 7:
        return 2
    return 1 if days_500 >= 1 else 0


def _values_by_day(results: list[Dated], last_day: int) -> dict[int, tuple[float, datetime]]:
    """Value in effect for each day from the first result's day to ``last_day``.

    The lowest result of a day, else the last earlier result (the latest one by collection time);
    with the collection time at which that day's value became known (its own lowest result, else
    the next result, which revealed the carried-forward day). Nothing is carried past the latest.
    """
    lowest: dict[int, StoredResult] = {}
    latest: dict[int, StoredResult] = {}
    for day, result in results:
        if day not in lowest or (result.value or 0.0) < (lowest[day].value or 0.0):
            lowest[day] = result
        latest[day] = result
    days_with_results = sorted(lowest)
    values: dict[int, tuple[float, datetime]] = {}
    carried: StoredResult | None = None
    following = 0
    for day in range(results[0][0], last_day + 1):
        while following < len(days_with_results) and days_with_results[following] <= day:
            following += 1
        if day in lowest:
            values[day] = (lowest[day].value or 0.0, lowest[day].collected_at)
            carried = latest[day]
        elif carried is not None and following < len(days_with_results):
            revealed_by = lowest[days_with_results[following]]
            values[day] = (carried.value or 0.0, revealed_by.collected_at)
    return values


def platelet_early_grade(ctx: RuleInput) -> tuple[int, int, int, StoredResult | None]:
    """T-ICAHT early grade (days 0-30): (grade, days < 50, days < 20, lowest platelet result)."""
    policy = ctx.policy
    dated = [
        (ctx.day_of(r), r)
        for r in ctx.results(Analyte.PLATELETS)
        if r.value is not None and ctx.day_of(r) >= 0
    ]
    if not dated or dated[0][0] > policy.icaht_early_last_day:
        return 0, 0, 0, None
    days = _values_by_day(dated, min(dated[-1][0], policy.icaht_early_last_day))
    low = sum(v < policy.platelets_low_k_per_ul for v, _ in days.values())
    profound = sum(v < policy.platelets_profound_k_per_ul for v, _ in days.values())
    grade = 4 if profound >= 14 else 3 if profound >= 1 else 2 if low >= 7 else 1 if low else 0
    early = [r for day, r in dated if day <= policy.icaht_early_last_day]
    lowest = min(early, key=lambda r: r.value or 0.0)
    return grade, low, profound, lowest


def open_episode_possible(ctx: RuleInput, result: StoredResult) -> bool:
    """Can a neutropenia episode be open at ``result`` or be changed by it?

    False only for an ANC > 500 appended after the latest ANC when, before it, either no ANC
    ≤ 500 (day ≥ 0) exists or the trailing run of ANC > 500 already is a stable recovery: then
    no episode is open, the result opens none, and earlier episodes end before it.
    """
    policy = ctx.policy
    limit = policy.anc_neutropenia_per_ul
    history = ctx.state.results.get(Analyte.ANC, [])
    if (result.value or 0.0) <= limit or not history or history[-1] is not result:
        return True
    run: list[StoredResult] = []
    for earlier in reversed(history[:-1]):
        if earlier.value is None or not ctx.usable(earlier):
            continue
        if ctx.day_of(earlier) < 0:
            break
        if earlier.value <= limit:
            return not _stable(ctx, run)
        run.append(earlier)
    return False


def _stable(ctx: RuleInput, run_newest_first: list[StoredResult]) -> bool:
    if len(run_newest_first) < 2:
        return False
    span = ctx.day(run_newest_first[0].collected_at) - ctx.day(run_newest_first[-1].collected_at)
    return span + 1 >= ctx.policy.icaht_stable_recovery_days


@dataclass(frozen=True)
class ProlongedNeutropeniaRule:
    name: RuleName = RuleName.PROLONGED_NEUTROPENIA
    #: platelets are context only (read when an ANC result triggers): they never change a finding
    analytes: frozenset[Analyte] = frozenset({Analyte.ANC})
    events: frozenset[str] = frozenset()
    depends_on: frozenset[RuleName] = frozenset()

    def may_change(self, ctx: RuleInput, analyte: Analyte, result: StoredResult) -> bool:
        return open_episode_possible(ctx, result)

    def evaluate(self, ctx: RuleInput) -> list[Finding]:
        alert_grade = ctx.policy.icaht_alert_grade
        return [
            _finding(ctx, episode)
            for episode in neutropenia_episodes(ctx)
            if episode.grade >= alert_grade
        ]


def _finding(ctx: RuleInput, episode: NeutropeniaEpisode) -> Finding:
    policy = ctx.policy
    raised_at, _ = episode.reached[policy.icaht_alert_grade]
    _, why = episode.reached[episode.grade]
    lowest = min((r for _, r in episode.results), key=lambda r: r.value or 0.0)
    cites = [Cite(Analyte.ANC, episode.start, "episode start: first ANC ≤ 500 /µL")]
    if lowest is not episode.start:
        cites.append(Cite(Analyte.ANC, lowest, "lowest ANC of the episode"))
    latest = episode.last if episode.recovery is None else episode.results[-2][1]
    if latest is not episode.start and latest is not lowest:
        cites.append(Cite(Analyte.ANC, latest, "latest ANC"))
    if episode.recovery is not None:
        cites.append(Cite(Analyte.ANC, episode.recovery[1], "stable recovery (> 500 /µL ≥ 3 days)"))
    plt_grade, plt_low, plt_profound, plt_lowest = platelet_early_grade(ctx)
    context = (
        ()
        if plt_lowest is None
        else (Cite(Analyte.PLATELETS, plt_lowest, "lowest platelets day 0-30"),)
    )

    def texts() -> Texts:
        summary = (
            f"ICAHT grade {episode.grade} ({why}); neutropenia since day "
            f"{ctx.day(episode.start.collected_at)} (ANC {episode.start.value:g} /µL), lowest ANC "
            f"{lowest.value:g} /µL on day {ctx.day_of(lowest)}."
        )
        if plt_lowest is not None:
            summary += (
                f" Platelets (T-ICAHT early grade {plt_grade}): {plt_low} days < "
                f"{policy.platelets_low_k_per_ul:g} and {plt_profound} days < "
                f"{policy.platelets_profound_k_per_ul:g} × 10³/µL in days 0-30."
            )
        if episode.recovery is not None:
            summary += f" Resolved: stable recovery by day {episode.recovery[0]}."
        return Texts(
            summary=summary,
            recommendation=RECOMMENDATION,
            threshold=(
                f"Alert at ICAHT grade ≥ {policy.icaht_alert_grade}. Early (days 0-30): days with "
                f"ANC ≤ {policy.anc_neutropenia_per_ul:g} /µL 1-6 → 1, 7-13 → 2, 14-30 → 3, all 31 → 4; "
                f"days ≤ {policy.anc_profound_per_ul:g} /µL 7-13 → 3, ≥ 14 → 4. Late (after day 30): "
                "two consecutive ANC ≤ 1500/1000/500/100 → grade 1/2/3/4"
            ),
        )

    return Finding(
        rule=RuleName.PROLONGED_NEUTROPENIA,
        episode_key=episode_key(episode.start.collected_at),
        episode_start=episode.start.collected_at,
        severity=Severity.CRITICAL if episode.grade >= 3 else Severity.WARNING,
        raised_at=raised_at,
        resolved_at=None if episode.recovery is None else episode.recovery[1].collected_at,
        signature=f"grade={episode.grade}",
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
        context=context,
    )


RULE = ProlongedNeutropeniaRule()
