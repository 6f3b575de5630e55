"""Prolonged neutropenia / ICAHT (``prolonged_neutropenia``) -- docs/clinical-spec.md section 3.

Sources: Westhafen 2025, "Immune effector cell-associated hematotoxicity (ICAHT)"; EHA/EBMT
ICAHT consensus grading (Rejeski et al., Blood 2023;142(10):865-877).

Episodes. One opens at an ANC ≤ 500 /µL (day ≥ 0) when none is open. It closes at *stable
recovery*: a run of consecutive ANC results all above the recovery limit, at least two results,
covering at least 3 calendar days (first and last day inclusive, as the "stretch lasting 3 days"
of the early count). The recovery limit is 500 /µL -- except, when the policy alerts at late
grade 1 or 2 (``icaht_alert_grade`` 1 or 2), after day 30 it is that grade's late threshold
(1500 or 1000 /µL), and two consecutive ANC after day 30 at or below it also open an episode
(starting at the first of the two). Decision (rev. 2, item 5): a policy that asks for late grade 2
must see an ANC of 800 /µL on days 45 and 52 as grade 2, which an episode that opens only at
≤ 500 and recovers above 500 can never report. With the default (grade 3) the episode is exactly
the consensus one.

Early ICAHT (days 0-30), per episode, cumulative: each day from the episode's first ANC up to the
day of the latest ANC (never beyond, never past day 30) takes the ANC in effect (the lowest result
of that day, else the last earlier result). Grade by the worse column: ≤ 500 /µL for 1-6 days → 1,
7-13 → 2, 14-30 → 3, all 31 days 0-30 → 4; ≤ 100 /µL for 7-13 days → 3, ≥ 14 → 4. A stretch above
500 of < 3 days between two neutropenic days counts in the ≤ 500 column ("non-stable recovery").
A day's value may still fall while its results arrive: grades are re-read after every result,
and a grade is reached at the collection time of the result that made it known.

Two ANC values of one specimen are one observation, read as the lower (as the lowest result of a
day is that day's value).

Late ICAHT (after day 30): the two most recent ANC results, consecutive and both after day 30, the
less severe setting the grade: ≤ 1500 → 1, ≤ 1000 → 2, ≤ 500 → 3, ≤ 100 → 4.

The episode's grade is the highest early or late grade reached while it is open. Alert at
``icaht_alert_grade`` (default 3; grade ≥ 3 critical, lower grades warning), ``updated`` when the
grade rises, resolved at stable recovery or ``end_of_follow_up``. The platelet (T-ICAHT) early
grade is context: < 50 × 10³/µL for 1-6 days → 1, ≥ 7 → 2; < 20 × 10³/µL for 1-13 days → 3,
≥ 14 → 4 (platelets never change a finding, so they are not among the rule's ``reads``).
The accumulator holds the open episode with its day counts, so pruning loses nothing.
"""

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

from schemas.vocab import Analyte, RuleName, Severity
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
    Texts,
    course_sentence,
    episode_key,
)
from streams.core.state import ClinicalEventRecord, StoredResult
from streams.core.text import day_count, labelled, number

REFERENCES = (
    f"{REVIEW} -- section 'Immune effector cell-associated hematotoxicity (ICAHT)': "
    '"Prolonged cytopenias (30-90 days), particularly neutropenia (<500/mm3) occur in a subset of '
    "patients (approximately 10% of patients experience persistent cytopenia one year after "
    'treatment)"',
    "EHA/EBMT ICAHT consensus grading: Rejeski K, et al. Immune effector cell-associated "
    "hematotoxicity: EHA/EBMT consensus grading and best practice recommendations. Blood "
    "2023;142(10):865-877",
)
RECOMMENDATION = (
    "Supportive care; consider G-CSF or thrombopoietin-receptor agonists. Prolonged cytopenia "
    "(30-90 days) occurs in a subset; about 10 % have persistent cytopenia at one year."
)
PRIOR_HCT_RECOMMENDATION = (
    " With prior HCT and severe persistent cytopenia, a CD34+ selected stem-cell boost has been "
    "beneficial."
)


@dataclass
class Tally:
    """Day counts of the early columns over finalized days."""

    count: int = 0
    profound: int = 0
    stretch: int = 0
    seen: bool = False
    first_day: int | None = None
    last_day: int | None = None
    first_profound: int | None = None
    last_profound: int | None = None

    def add(self, policy: Policy, day: int, value: float) -> None:
        if value > policy.anc_neutropenia_per_ul:
            self.stretch += 1
            return
        if self.seen and self.stretch < policy.icaht_nonstable_recovery_days:
            self.count += self.stretch
        self.count += 1
        self.stretch, self.seen = 0, True
        self.first_day = day if self.first_day is None else self.first_day
        self.last_day = day
        if value <= policy.anc_profound_per_ul:
            self.profound += 1
            self.first_profound = day if self.first_profound is None else self.first_profound
            self.last_profound = day


@dataclass
class DayCounts:
    """Early counting of one episode: finalized days, and the latest result day still open."""

    day: int
    low: float
    last: float
    final: Tally = field(default_factory=Tally)
    done: bool = False

    def advance(self, policy: Policy, day: int, value: float) -> None:
        if self.done:
            return
        if day == self.day:
            self.low, self.last = min(self.low, value), value
            return
        self.final.add(policy, self.day, self.low)
        for carried in range(self.day + 1, min(day, policy.icaht_early_last_day + 1)):
            self.final.add(policy, carried, self.last)
        if day > policy.icaht_early_last_day:
            self.done = True
            return
        self.day, self.low, self.last = day, value, value

    def provisional(self, policy: Policy) -> Tally:
        tally = dataclasses.replace(self.final)
        if not self.done:
            tally.add(policy, self.day, self.low)
        return tally


@dataclass
class Reached:
    grade: int
    at: datetime
    why: str


@dataclass
class NeutropeniaEpisode:
    start: StoredResult
    lowest: StoredResult
    latest: StoredResult
    counts: DayCounts | None
    reached: list[Reached] = field(default_factory=list)
    #: the two ANC results of the highest late grade reached
    late_pair: list[StoredResult] = field(default_factory=list)
    #: the trailing run of results above the recovery limit
    above: list[StoredResult] = field(default_factory=list)

    @property
    def grade(self) -> int:
        return self.reached[-1].grade if self.reached else 0

    def reach(self, grade: int, at: datetime, why: str) -> bool:
        if grade <= self.grade:
            return False
        self.reached.append(Reached(grade, at, why))
        return True


@dataclass
class IcahtAcc:
    episode: NeutropeniaEpisode | None = None
    #: the latest ANC result (late pairs, and the anchor of a monitoring gap)
    previous: StoredResult | None = None
    stopped: ClinicalEventRecord | None = None


def late_limit(policy: Policy) -> float:
    """Recovery limit after day 30, and the opening limit of a late low-grade episode."""
    if policy.icaht_alert_grade <= 2:
        return policy.late_icaht_anc_per_ul[policy.icaht_alert_grade - 1]
    return policy.anc_neutropenia_per_ul


class ProlongedNeutropeniaRule(ScanRule[IcahtAcc]):
    name = RuleName.PROLONGED_NEUTROPENIA
    reads = Reads(
        analytes=frozenset({Analyte.ANC}),
        events=frozenset({END_OF_FOLLOW_UP}),
        settings=(
            "icaht_alert_grade",
            "anc_neutropenia_per_ul",
            "anc_profound_per_ul",
            "icaht_early_last_day",
            "icaht_nonstable_recovery_days",
            "icaht_stable_recovery_days",
            "late_icaht_anc_per_ul",
            "platelets_low_k_per_ul",
            "platelets_profound_k_per_ul",
        ),
    )
    acc_type = IcahtAcc

    def start(self, ctx: RuleInput) -> IcahtAcc:
        return IcahtAcc()

    def feed(self, ctx: RuleInput, acc: IcahtAcc, item: Item, out: list[Finding]) -> None:
        if acc.stopped is not None:
            return
        if isinstance(item, Course):
            if item.kind is END_OF_FOLLOW_UP:
                episode = acc.episode
                if episode is not None and episode.grade >= ctx.policy.icaht_alert_grade:
                    out.append(_finding(ctx, episode, None, item.event))
                acc.episode = None
                acc.stopped = item.event
            return
        result = item.lowest(Analyte.ANC)
        if result is not None:
            if item.day >= 0:
                _result(ctx, acc, result, item.day, out)
            acc.previous = result

    def open_findings(self, ctx: RuleInput, acc: IcahtAcc) -> list[Finding]:
        episode = acc.episode
        if episode is None or episode.grade < ctx.policy.icaht_alert_grade:
            return []
        return [_finding(ctx, episode, None, None)]


def _result(
    ctx: RuleInput, acc: IcahtAcc, result: StoredResult, day: int, out: list[Finding]
) -> None:
    policy = ctx.policy
    value = result.value or 0.0
    previous = acc.previous
    pair = (
        previous
        if day > policy.icaht_early_last_day
        and previous is not None
        and ctx.day_of(previous) > policy.icaht_early_last_day
        else None
    )
    late = _late_grade(policy, max(value, pair.value or 0.0)) if pair is not None else 0
    episode = acc.episode
    if episode is None:
        if value <= policy.anc_neutropenia_per_ul:
            counts = DayCounts(day, value, value) if day <= policy.icaht_early_last_day else None
            episode = NeutropeniaEpisode(result, result, result, counts)
        elif (
            pair is not None and policy.icaht_alert_grade <= 2 and late >= policy.icaht_alert_grade
        ):
            lowest = pair if (pair.value or 0.0) <= value else result
            episode = NeutropeniaEpisode(pair, lowest, result, None)
        else:
            return
        acc.episode = episode
    else:
        episode.latest = result
        if value < (episode.lowest.value or 0.0):
            episode.lowest = result
        if episode.counts is not None:
            episode.counts.advance(policy, day, value)
    if episode.counts is not None:
        tally = episode.counts.provisional(policy)
        grade = _early_grade(policy, tally)
        if grade:
            episode.reach(grade, result.collected_at, _early_why(policy, grade, tally))
    if (
        late
        and pair is not None
        and episode.reach(late, result.collected_at, _late_why(ctx, late, pair, result))
    ):
        episode.late_pair = [pair, result]
    limit = (
        late_limit(policy) if day > policy.icaht_early_last_day else policy.anc_neutropenia_per_ul
    )
    if value <= limit:
        episode.above = []
        return
    episode.above.append(result)
    span = day - ctx.day_of(episode.above[0]) + 1
    if len(episode.above) >= 2 and span >= policy.icaht_stable_recovery_days:
        if episode.grade >= policy.icaht_alert_grade:
            out.append(_finding(ctx, episode, result, None))
        acc.episode = None


def _late_grade(policy: Policy, less_severe: float) -> int:
    grade = 0
    for g, limit in enumerate(policy.late_icaht_anc_per_ul, start=1):
        if less_severe <= limit:
            grade = g
    return grade


def _early_grade(policy: Policy, tally: Tally) -> int:
    full = tally.count >= policy.icaht_early_last_day + 1
    if full or tally.profound >= 14:
        return 4
    if tally.count >= 14 or tally.profound >= 7:
        return 3
    if tally.count >= 7:
        return 2
    return 1 if tally.count >= 1 else 0


def _early_why(policy: Policy, grade: int, tally: Tally) -> str:
    why = (
        f"early ICAHT grade {grade}: ANC ≤ {policy.anc_neutropenia_per_ul:g} /µL on "
        f"{day_count(tally.count)} (first day {tally.first_day}, last day {tally.last_day})"
    )
    if tally.profound:
        why += (
            f", ≤ {policy.anc_profound_per_ul:g} /µL on {day_count(tally.profound)} "
            f"(first day {tally.first_profound}, last day {tally.last_profound})"
        )
    return why


def _late_why(ctx: RuleInput, grade: int, first: StoredResult, second: StoredResult) -> str:
    return (
        f"late ICAHT grade {grade}: two consecutive ANC after day "
        f"{ctx.policy.icaht_early_last_day}, {labelled(Analyte.ANC, first)} on day "
        f"{ctx.day_of(first)} and {labelled(Analyte.ANC, second)} on day {ctx.day_of(second)}"
    )


def platelet_early_grade(ctx: RuleInput) -> tuple[int, int, int, StoredResult | None]:
    """T-ICAHT early grade (days 0-30): (grade, days < 50, days < 20, lowest platelet result)."""
    policy = ctx.policy
    last_day = policy.icaht_early_last_day
    dated = [
        (ctx.day_of(r), r)
        for r in ctx.results(Analyte.PLATELETS)
        if r.value is not None and 0 <= ctx.day_of(r) <= last_day
    ]
    if not dated:
        return 0, 0, 0, None
    lowest_of_day: dict[int, float] = {}
    latest_of_day: dict[int, float] = {}
    for day, result in dated:
        value = result.value or 0.0
        lowest_of_day[day] = min(lowest_of_day.get(day, value), value)
        latest_of_day[day] = value
    low = profound = 0
    carried = 0.0
    for day in range(dated[0][0], dated[-1][0] + 1):
        value = lowest_of_day.get(day, carried)
        carried = latest_of_day.get(day, carried)
        low += value < policy.platelets_low_k_per_ul
        profound += value < policy.platelets_profound_k_per_ul
    grade = 4 if profound >= 14 else 3 if profound >= 1 else 2 if low >= 7 else 1 if low else 0
    lowest = min((r for _, r in dated), key=lambda r: r.value or 0.0)
    return grade, low, profound, lowest


def _finding(
    ctx: RuleInput,
    episode: NeutropeniaEpisode,
    recovery: StoredResult | None,
    ended: ClinicalEventRecord | None,
) -> Finding:
    policy = ctx.policy
    raised = next(r for r in episode.reached if r.grade >= policy.icaht_alert_grade)
    why = episode.reached[-1].why
    grade = episode.grade
    cites = [Cite(Analyte.ANC, episode.start, "episode start")]
    if episode.lowest != episode.start:
        cites.append(Cite(Analyte.ANC, episode.lowest, "lowest ANC of the episode"))
    shown = [episode.start, episode.lowest]
    for result in episode.late_pair:
        if result not in shown:
            cites.append(Cite(Analyte.ANC, result, "late ICAHT pair (two consecutive ANC)"))
            shown.append(result)
    if recovery is None and episode.latest not in shown:
        cites.append(Cite(Analyte.ANC, episode.latest, "latest ANC"))
    if recovery is not None:
        cites.append(Cite(Analyte.ANC, recovery, "stable recovery"))
    plt_grade, plt_low, plt_profound, plt_lowest = platelet_early_grade(ctx)
    context = (
        ()
        if plt_lowest is None
        else (Cite(Analyte.PLATELETS, plt_lowest, "lowest platelets day 0-30"),)
    )
    enrollment = ctx.state.enrollment
    assert enrollment is not None
    start_day = ctx.day_of(episode.start)

    def texts() -> Texts:
        summary = (
            f"ICAHT grade {grade} ({why}); neutropenia since day {start_day} "
            f"({labelled(Analyte.ANC, episode.start)}), lowest "
            f"{labelled(Analyte.ANC, episode.lowest)} on day {ctx.day_of(episode.lowest)}."
        )
        if plt_lowest is not None:
            summary += (
                f" Platelets (T-ICAHT early grade {plt_grade}): "
                f"< {number(policy.platelets_low_k_per_ul)} × 10³/µL on {day_count(plt_low)} and "
                f"< {number(policy.platelets_profound_k_per_ul)} × 10³/µL on "
                f"{day_count(plt_profound)} in days 0-30."
            )
        if recovery is not None:
            summary += f" Resolved: stable recovery by day {ctx.day_of(recovery)}."
        elif ended is not None:
            summary += f" Resolved: {course_sentence(ctx, ended)}."
        recommendation = RECOMMENDATION
        if enrollment.prior_hct:
            recommendation += PRIOR_HCT_RECOMMENDATION
        return Texts(
            summary=summary,
            recommendation=recommendation,
            threshold=(
                f"Alert at ICAHT grade ≥ {policy.icaht_alert_grade} (icaht_alert_grade). Early "
                f"(days 0-30): days with ANC ≤ {policy.anc_neutropenia_per_ul:g} /µL 1-6 → 1, "
                f"7-13 → 2, 14-30 → 3, all 31 → 4; days ≤ {policy.anc_profound_per_ul:g} /µL "
                "7-13 → 3, ≥ 14 → 4. Late (after day 30): two consecutive ANC ≤ "
                + "/".join(number(v) for v in policy.late_icaht_anc_per_ul)
                + " /µL → grade 1/2/3/4"
            ),
        )

    resolved_at = (
        recovery.collected_at if recovery is not None else (ended.at if ended is not None else None)
    )
    return Finding(
        rule=RuleName.PROLONGED_NEUTROPENIA,
        episode_key=episode_key(episode.start.collected_at),
        episode_start=episode.start.collected_at,
        severity=Severity.CRITICAL if grade >= 3 else Severity.WARNING,
        raised_at=raised.at,
        resolved_at=resolved_at,
        signature=f"grade={grade}",
        texts=texts,
        evidence=tuple(cites),
        references=REFERENCES,
        context=context,
    )


RULE = ProlongedNeutropeniaRule()
