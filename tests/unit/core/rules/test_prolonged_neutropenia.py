"""Prolonged neutropenia / ICAHT (clinical-rules.md section 3; streams/rules/prolonged_neutropenia.py).

Early ICAHT (days 0-30) by cumulative days in two columns: ANC ≤ 500 /µL 1-6 → 1, 7-13 → 2,
14-30 → 3, all 31 days → 4; ANC ≤ 100 /µL 7-13 → 3, ≥ 14 → 4; the worse column sets the grade.
Late ICAHT (after day 30): the two most recent consecutive ANC, the less severe setting the grade:
≤ 1500/1000/500/100 → 1/2/3/4. Critical from grade 3 (``icaht_alert_grade``, 2 → warning at 2).
"""

import pytest

from schemas.vocab import AlertAction, Analyte, RuleName
from streams.core.policy import Policy
from streams.testing import Timeline, actions, active, at_day, run

ICAHT = RuleName.PROLONGED_NEUTROPENIA
FROM_GRADE_2 = Policy(icaht_alert_grade=2)
FROM_GRADE_1 = Policy(icaht_alert_grade=1)


def icaht(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, ICAHT)]


def only(alerts):
    return [a for a in alerts if a.rule is ICAHT]


def patient() -> Timeline:
    return Timeline("P1").infusion(day=0)


def daily_anc(t: Timeline, first: int, last: int, per_ul: float) -> Timeline:
    for day in range(first, last + 1):
        t.anc(day=day, per_ul=per_ul)
    return t


def grade_in(alert) -> int:
    return int(alert.summary.split("ICAHT grade ", 1)[1][0])


# --- the ≤ 500 /µL column: 1-6 days grade 1, 7-13 grade 2, 14-30 grade 3, all 31 grade 4 -------


def test_6_days_of_anc_at_or_below_500_is_grade_1_and_never_alerts():
    t = daily_anc(patient(), 1, 6, 400)
    assert icaht(run(t.events, FROM_GRADE_2)) == []
    assert icaht(run(t.events, FROM_GRADE_1)) == [("raised", "warning")]


def test_7_days_of_anc_at_or_below_500_is_grade_2_a_warning_only_when_asked_for():
    t = daily_anc(patient(), 1, 7, 400)
    assert icaht(run(t.events)) == []
    alerts = only(run(t.events, FROM_GRADE_2))
    assert icaht(alerts) == [("raised", "warning")]
    assert grade_in(alerts[0]) == 2
    assert alerts[0].event_time == at_day(7)


def test_13_days_of_anc_at_or_below_500_is_still_grade_2():
    t = daily_anc(patient(), 1, 13, 400)
    assert icaht(run(t.events)) == []
    assert icaht(run(t.events, FROM_GRADE_2)) == [("raised", "warning")]


def test_14_days_of_anc_at_or_below_500_is_grade_3_critical(documented):
    t = daily_anc(patient(), 1, 14, 400)
    alerts = only(run(t.events))
    assert icaht(alerts) == [("raised", "critical")]
    alert = alerts[0]
    assert grade_in(alert) == 3
    assert alert.event_time == at_day(14)
    assert alert.episode_start == at_day(1)
    assert "ANC ≤ 500 /µL on 14 days (first day 1, last day 14)" in alert.summary
    documented(alert, analytes={Analyte.ANC}, collected={at_day(1), at_day(14)})
    assert {(e.value, e.unit) for e in alert.evidence} == {(400.0, "/uL")}
    assert "G-CSF" in alert.recommendation
    assert "grade ≥ 3" in alert.threshold
    assert any("Rejeski" in ref for ref in alert.references)


def test_anc_of_exactly_500_counts_and_501_does_not():
    assert icaht(run(daily_anc(patient(), 1, 14, 500).events)) == [("raised", "critical")]
    assert icaht(run(daily_anc(patient(), 1, 14, 501).events, FROM_GRADE_1)) == []


def test_neutropenia_on_days_1_to_30_is_grade_3_not_4():
    alerts = only(run(daily_anc(patient(), 1, 30, 400).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert grade_in(alerts[-1]) == 3


def test_neutropenia_on_all_31_days_0_to_30_is_grade_4():
    alerts = only(run(daily_anc(patient(), 0, 30, 400).events))
    assert icaht(alerts) == [("raised", "critical"), ("updated", "critical")]
    assert grade_in(alerts[0]) == 3 and alerts[0].event_time == at_day(13)
    assert grade_in(alerts[1]) == 4 and alerts[1].event_time == at_day(30)
    assert alerts[1].alert_id == alerts[0].alert_id


# --- the ≤ 100 /µL column: 7-13 days grade 3, ≥ 14 grade 4 --------------------------------


def test_6_days_of_anc_at_or_below_100_is_only_grade_1():
    assert icaht(run(daily_anc(patient(), 1, 6, 80).events, FROM_GRADE_2)) == []


def test_7_days_of_anc_at_or_below_100_is_grade_3_critical():
    alerts = only(run(daily_anc(patient(), 1, 7, 100).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert grade_in(alerts[0]) == 3
    assert "≤ 100 /µL on 7 days (first day 1, last day 7)" in alerts[0].summary


def test_anc_of_101_is_not_profound_neutropenia():
    # 7 days at 101 /µL: ≤ 500 column only → grade 2
    alerts = only(run(daily_anc(patient(), 1, 7, 101).events, FROM_GRADE_2))
    assert icaht(alerts) == [("raised", "warning")]
    assert grade_in(alerts[0]) == 2


def test_13_days_at_or_below_100_stays_grade_3_and_14_days_is_grade_4():
    t = daily_anc(patient(), 1, 13, 50)
    assert icaht(run(t.events)) == [("raised", "critical")]
    alerts = only(run(t.anc(day=14, per_ul=50).events))
    assert icaht(alerts) == [("raised", "critical"), ("updated", "critical")]
    assert grade_in(alerts[1]) == 4
    assert alerts[1].event_time == at_day(14)


def test_worse_column_sets_the_grade_and_each_rise_is_an_update_of_one_alert():
    # 400 /µL days 1-6, then 50 /µL: grade 2 on day 7 (7 days ≤ 500), grade 3 on day 13
    # (7 days ≤ 100), grade 4 on day 20 (14 days ≤ 100)
    t = daily_anc(daily_anc(patient(), 1, 6, 400), 7, 20, 50)
    alerts = only(run(t.events, FROM_GRADE_2))
    assert icaht(alerts) == [
        ("raised", "warning"),
        ("updated", "critical"),
        ("updated", "critical"),
    ]
    assert [grade_in(a) for a in alerts] == [2, 3, 4]
    assert [a.event_time for a in alerts] == [at_day(7), at_day(13), at_day(20)]
    assert len({a.alert_id for a in alerts}) == 1


# --- value in effect: carried forward, never beyond the latest ANC ------------------------


def test_value_in_effect_is_carried_forward_to_the_next_result():
    # two results 13 days apart: days 1-13 take 300 /µL; a third result on day 14 makes 14
    t = patient().anc(day=1, per_ul=300).anc(day=13, per_ul=300)
    assert icaht(run(t.events)) == []
    assert icaht(run(t.events, FROM_GRADE_2)) == [("raised", "warning")]
    alerts = only(run(t.anc(day=14, per_ul=300).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(14)


def test_nothing_is_extrapolated_beyond_the_latest_anc():
    # ANC 300 on days 1 and 13, no further ANC: still grade 2 on day 20, whatever the clock says
    t = patient().anc(day=1, per_ul=300).anc(day=13, per_ul=300)
    assert icaht(run(t.events, now=at_day(20))) == []


def test_lowest_result_of_a_day_is_the_value_of_that_day():
    # day 7 has 800 in the morning and 300 in the evening: day 7 counts as neutropenic
    t = daily_anc(patient(), 1, 6, 300).anc(day=7, per_ul=800, hour=6).anc(day=7, per_ul=300)
    assert icaht(run(t.events, FROM_GRADE_2)) == [("raised", "warning")]


def test_day_without_anc_takes_the_last_earlier_result_not_the_lowest_of_the_previous_day():
    # days 1-10 at 300; 700 /µL on the evening of day 10; next ANC on day 14 (300).
    # Days 11-13 take 700 (the last earlier result): a 3-day stretch above 500, not counted:
    # 10 + 1 = 11 days ≤ 500 → grade 2, no critical alert on day 14.
    t = daily_anc(patient(), 1, 10, 300).anc(day=10, per_ul=700, hour=20).anc(day=14, per_ul=300)
    assert icaht(run(t.events)) == []


def test_anc_before_day_0_is_not_counted():
    # the lymphodepletion nadir before the infusion does not count towards early ICAHT
    t = daily_anc(patient(), -5, -1, 300)
    daily_anc(t, 0, 12, 300)
    assert icaht(run(t.events)) == []
    alerts = only(run(t.anc(day=13, per_ul=300).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert alerts[0].episode_start == at_day(0)


# --- non-stable recovery: < 3 days above 500 between neutropenic days (≤ 500 column only) ---


def test_two_days_above_500_between_neutropenic_days_count_as_neutropenic():
    # 300 days 1-9, 600 on day 10 (carried to day 11), 300 days 12-14: 9 + 2 + 3 = 14 days
    t = daily_anc(patient(), 1, 9, 300).anc(day=10, per_ul=600)
    daily_anc(t, 12, 14, 300)
    alerts = only(run(t.events))
    assert icaht(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(14)


def test_three_days_above_500_between_neutropenic_days_do_not_count():
    # 300 days 1-9, 600 on day 10 (carried to days 11 and 12), 300 from day 13: 9 + 2 = 11 on
    # day 14; 14 days are reached on day 17
    t = daily_anc(patient(), 1, 9, 300).anc(day=10, per_ul=600)
    daily_anc(t, 13, 14, 300)
    assert icaht(run(t.events)) == []
    alerts = only(run(daily_anc(t, 15, 17, 300).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(17)


def test_non_stable_recovery_does_not_count_in_the_100_column():
    # 50 /µL days 1-3, 600 on day 4 (to day 5), 50 from day 6. On day 7: ≤ 500 column 7 days
    # (the 2-day stretch counts) → grade 2; ≤ 100 column only 5 days → not grade 3.
    t = daily_anc(patient(), 1, 3, 50).anc(day=4, per_ul=600)
    daily_anc(t, 6, 7, 50)
    assert icaht(run(t.events)) == []
    alerts = only(run(t.events, FROM_GRADE_2))
    assert icaht(alerts) == [("raised", "warning")]
    assert "≤ 100 /µL on 5 days" in alerts[0].summary
    # the 7th day ≤ 100 is day 9
    alerts = only(run(daily_anc(t, 8, 9, 50).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(9)


# --- stable recovery: ≥ 2 results > 500 spanning 3 days closes the episode -----------------


def test_stable_recovery_over_3_calendar_days_resolves_the_alert(documented):
    t = daily_anc(patient(), 1, 14, 300).anc(day=16, per_ul=600).anc(day=18, per_ul=700)
    alerts = only(run(t.events))
    assert icaht(alerts) == [("raised", "critical"), ("resolved", "critical")]
    resolved = alerts[1]
    assert resolved.alert_id == alerts[0].alert_id
    assert resolved.event_time == at_day(18)
    assert "stable recovery" in resolved.summary
    documented(resolved, analytes={Analyte.ANC}, collected={at_day(18)})
    assert active(alerts) == {}


def test_two_results_above_500_spanning_only_2_days_are_not_a_stable_recovery():
    t = daily_anc(patient(), 1, 14, 300).anc(day=16, per_ul=600).anc(day=17, per_ul=700)
    assert icaht(run(t.events)) == [("raised", "critical")]
    # neutropenic again on day 18: the same episode, no second alert
    alerts = only(run(t.anc(day=18, per_ul=300).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert len(active(alerts)) == 1


def test_one_result_above_500_is_not_a_stable_recovery_however_long_it_holds():
    t = daily_anc(patient(), 1, 14, 300).anc(day=16, per_ul=900).anc(day=25, per_ul=300)
    assert icaht(run(t.events)) == [("raised", "critical")]


def test_counting_restarts_after_a_stable_recovery():
    # 10 days ≤ 500, stable recovery on days 11-13, then 7 more days: two grade-2 episodes,
    # never 17 cumulative days (grade 3)
    t = daily_anc(patient(), 1, 10, 300).anc(day=11, per_ul=800).anc(day=13, per_ul=900)
    daily_anc(t, 14, 20, 300)
    assert icaht(run(t.events)) == []
    alerts = only(run(t.events, FROM_GRADE_2))
    assert icaht(alerts) == [
        ("raised", "warning"),
        ("resolved", "warning"),
        ("raised", "warning"),
    ]
    assert alerts[2].alert_id != alerts[0].alert_id
    assert alerts[2].episode_start == at_day(14)


# --- late ICAHT: the two most recent consecutive ANC after day 30 -------------------------


def late(first: float, second: float) -> Timeline:
    """ANC normal on day 0; neutropenia found on day 31 (``first``), repeated on day 33."""
    return patient().anc(day=0, per_ul=2000).anc(day=31, per_ul=first).anc(day=33, per_ul=second)


@pytest.mark.parametrize(
    ("first", "second", "grade"),
    [
        (400, 1500, 1),
        (400, 1501, 0),
        (400, 1000, 2),
        (400, 1001, 1),
        (400, 500, 3),
        (400, 501, 2),
        (100, 100, 4),
        (100, 101, 3),
        (50, 400, 3),  # the less severe of the two sets the grade
        (400, 50, 3),
    ],
)
def test_late_icaht_grade_from_two_consecutive_anc_after_day_30(first, second, grade):
    alerts = only(run(late(first, second).events, FROM_GRADE_1))
    if grade == 0:
        assert icaht(alerts) == []
        return
    assert icaht(alerts) == [("raised", "critical" if grade >= 3 else "warning")]
    assert grade_in(alerts[0]) == grade
    assert "late ICAHT" in alerts[0].summary
    assert alerts[0].event_time == at_day(33)


def test_late_grade_3_raises_a_critical_alert_at_the_default_policy(documented):
    alerts = only(run(late(400, 300).events))
    assert icaht(alerts) == [("raised", "critical")]
    documented(alerts[0], analytes={Analyte.ANC}, collected={at_day(31), at_day(33)})


def test_pair_with_one_result_on_day_30_is_not_late_icaht():
    # day 30 is early: the pair (day 30, day 32) does not decide; (day 32, day 34) does
    t = patient().anc(day=0, per_ul=2000).anc(day=30, per_ul=400).anc(day=32, per_ul=300)
    assert icaht(run(t.events, FROM_GRADE_2)) == []
    alerts = only(run(t.anc(day=34, per_ul=300).events))
    assert icaht(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(34)


def test_early_and_late_grades_combine_into_the_episode_grade():
    # grade 2 in days 24-30 (7 days), late grade 3 on days 31 and 33: updated to critical
    t = patient().anc(day=0, per_ul=2000)
    daily_anc(t, 24, 30, 300).anc(day=31, per_ul=300).anc(day=33, per_ul=300)
    alerts = only(run(t.events, FROM_GRADE_2))
    assert icaht(alerts) == [("raised", "warning"), ("updated", "critical")]
    # (day 30, day 31) is not a late pair; (day 31, day 33) is
    assert [a.event_time for a in alerts] == [at_day(30), at_day(33)]


# --- platelets (T-ICAHT) are context only ------------------------------------------------


def test_platelets_never_alert_alone():
    t = patient()
    for day in range(1, 21):
        t.platelets(day=day, k_per_ul=5).anc(day=day, per_ul=2500)
    assert icaht(run(t.events, FROM_GRADE_1)) == []


@pytest.mark.parametrize(
    ("days", "k_per_ul", "grade"),
    [
        (6, 49, 1),
        (7, 49, 2),
        (14, 50, 0),
        (1, 19, 3),
        (7, 20, 2),
        (13, 19, 3),
        (14, 19, 4),
    ],
)
def test_platelet_grade_is_shown_as_context_of_the_neutropenia_alert(
    days, k_per_ul, grade, documented
):
    t = patient()
    for day in range(1, days + 1):
        t.platelets(day=day, k_per_ul=k_per_ul)
    daily_anc(t, 1, 14, 300)
    alerts = only(run(t.events))
    assert icaht(alerts) == [("raised", "critical")]
    alert = alerts[0]
    assert f"T-ICAHT early grade {grade}" in alert.summary
    (context,) = alert.context
    assert (context.analyte, context.value, context.unit) == (
        Analyte.PLATELETS,
        float(k_per_ul),
        "10*3/uL",
    )
    documented(alert, analytes={Analyte.ANC})


def test_neutropenia_alert_without_platelets_has_no_platelet_context():
    alerts = only(run(daily_anc(patient(), 1, 14, 300).events))
    assert alerts[0].context == ()
    assert "T-ICAHT" not in alerts[0].summary


def test_late_earlier_anc_is_an_update_of_the_open_alert():
    # neutropenic days 3-16 → critical on day 16; the day-2 ANC arrives late
    t = daily_anc(patient(), 3, 16, 300)
    t.anc(day=2, per_ul=300)  # the day-2 count, reported late: neutropenic since day 2
    alerts = only(run(t.events))
    assert [a.action for a in alerts] == [AlertAction.RAISED, AlertAction.UPDATED]
    raised, updated = alerts
    assert updated.alert_id == raised.alert_id
    assert updated.episode_start < raised.episode_start
    assert list(active(alerts)) == [raised.alert_id]


def test_late_earlier_anc_keeps_one_alert_for_the_rest_of_the_episode():
    t = daily_anc(patient(), 3, 16, 300)
    t.anc(day=2, per_ul=300)  # the day-2 count, reported late: neutropenic since day 2
    t.anc(day=17, per_ul=250)  # still neutropenic
    alerts = only(run(t.events))
    assert [a.action for a in alerts].count(AlertAction.RAISED) == 1
    assert AlertAction.RETRACTED not in [a.action for a in alerts]
    assert list(active(alerts)) == [alerts[0].alert_id]


# --- rev. 2 item 5: late grades 1-2 reportable ------------------------------------------------


def test_rev2_late_icaht_grade_2_is_reported_when_the_policy_asks_for_grade_2():
    # ANC 800 on days 45 and 52: two consecutive ANC after day 30, both ≤ 1000 → late grade 2
    t = patient().anc(day=20, per_ul=2000).anc(day=45, per_ul=800).anc(day=52, per_ul=800)
    alerts = only(run(t.events, FROM_GRADE_2))
    assert icaht(alerts) == [("raised", "warning")]
    assert alerts[0].event_time == at_day(52)
    assert alerts[0].episode_start == at_day(45)
    assert "late ICAHT grade 2" in alerts[0].summary
    assert icaht(run(t.events)) == []  # the default (grade 3) never reports grade 2


def test_rev2_late_low_grade_episode_recovers_above_the_grade_threshold():
    # under grade 2 the late episode closes only at ANC > 1000 for 3 days
    t = patient().anc(day=45, per_ul=800).anc(day=52, per_ul=800)
    t.anc(day=55, per_ul=900).anc(day=58, per_ul=950)  # > 500 but ≤ 1000: not recovered
    assert icaht(run(t.events, FROM_GRADE_2)) == [("raised", "warning")]
    t.anc(day=60, per_ul=1200).anc(day=63, per_ul=1300)
    assert icaht(run(t.events, FROM_GRADE_2)) == [("raised", "warning"), ("resolved", "warning")]


def test_rev2_late_grade_1_under_a_grade_1_policy():
    t = patient().anc(day=45, per_ul=1400).anc(day=52, per_ul=1500)
    assert icaht(run(t.events, FROM_GRADE_1)) == [("raised", "warning")]


def test_rev2_icaht_evidence_never_says_1_days():
    t = patient().anc(day=5, per_ul=300)
    (alert,) = only(run(t.events, FROM_GRADE_1))
    assert "1 day " in alert.summary and "1 days" not in alert.summary


def test_rev2_cd34_boost_only_mentioned_with_prior_hct():
    def alert(prior_hct: bool):
        t = Timeline("P1").infusion(day=0, prior_hct=prior_hct)
        for day in range(1, 15):
            t.anc(day=day, per_ul=300)
        return only(run(t.events))[0]

    assert "CD34+" not in alert(False).recommendation
    assert "CD34+" in alert(True).recommendation
