"""IEC-HS pattern (docs/clinical-spec.md §4; streams/core/rules/iec_hs.py).

From day 7 (or after CRS resolved): ferritin > 2 × baseline (last ferritin on or before day 0;
without one > 2 × ULN 300 ng/mL) or a ≥ 2-fold rise within 72 h, plus ≥ 1 supporting category
within ±7 days: cytopenia (ANC or platelets fallen ≥ 50 % from the 7-day peak), fibrinogen
< 150 mg/dL, ALT or AST > 200 U/L, triglycerides > 265 mg/dL. LDH is context only. Resolved when
ferritin < 50 % of the episode's peak; a new episode needs ≥ 2 × the lowest since resolution.
"""

from datetime import timedelta

import pytest

from schemas.vocab import AlertAction, Analyte, RuleName
from streams.testing import Timeline, actions, active, at_day, run

IEC = RuleName.IEC_HS


def iec(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, IEC)]


def only(alerts):
    return [a for a in alerts if a.rule is IEC]


def patient() -> Timeline:
    return Timeline("P1").infusion(day=0)


RAISED = [("raised", "critical")]


# --- the ferritin criterion ----------------------------------------------------------------


def test_ferritin_above_twice_baseline_with_low_fibrinogen_is_critical(documented):
    t = patient().ferritin(day=-2, ng_ml=400).ferritin(day=10, ng_ml=801)
    t.fibrinogen(day=10, mg_dl=120)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    alert = alerts[0]
    assert alert.event_time == at_day(10)
    assert "> 2 × baseline (400 ng/mL on day -2, accession P1-A1)" in alert.summary
    assert "hypofibrinogenemia" in alert.summary
    documented(
        alert,
        analytes={Analyte.FERRITIN, Analyte.FIBRINOGEN},
        collected={at_day(-2), at_day(10)},
    )
    cited = {(e.analyte, e.value, e.unit) for e in alert.evidence}
    assert {
        (Analyte.FERRITIN, 400.0, "ng/mL"),
        (Analyte.FERRITIN, 801.0, "ng/mL"),
        (Analyte.FIBRINOGEN, 120.0, "mg/dL"),
    } <= cited
    assert "anakinra" in alert.recommendation and "ruxolitinib" in alert.recommendation
    assert "150 mg/dL" in alert.threshold
    assert any("Hines" in ref for ref in alert.references)


def test_ferritin_of_exactly_twice_baseline_is_not_enough():
    t = patient().ferritin(day=-2, ng_ml=400).ferritin(day=10, ng_ml=800)
    t.fibrinogen(day=10, mg_dl=120)
    assert iec(run(t.events)) == []


@pytest.mark.parametrize(("ferritin", "alerts"), [(601, True), (600, False)])
def test_without_a_baseline_ferritin_must_exceed_twice_the_uln_of_300(ferritin, alerts):
    t = patient().ferritin(day=10, ng_ml=ferritin).fibrinogen(day=10, mg_dl=120)
    result = only(run(t.events))
    assert iec(result) == (RAISED if alerts else [])
    if alerts:
        assert "ULN (300 ng/mL; no baseline)" in result[0].summary


def test_high_baseline_replaces_the_uln_as_reference():
    # baseline 1000 ng/mL (active leukaemia): 1500 is > 2 × ULN but not > 2 × baseline
    t = patient().ferritin(day=-3, ng_ml=1000).ferritin(day=10, ng_ml=1500)
    t.fibrinogen(day=10, mg_dl=120)
    assert iec(run(t.events)) == []


def test_baseline_is_the_last_ferritin_on_or_before_day_0():
    # 1000 on day -5, 250 on day 0 (the baseline): 501 on day 10 is > 2 × 250
    t = patient().ferritin(day=-5, ng_ml=1000).ferritin(day=0, ng_ml=250)
    t.ferritin(day=10, ng_ml=501).fibrinogen(day=10, mg_dl=120)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    assert "baseline (250 ng/mL on day 0" in alerts[0].summary


def test_ferritin_on_day_1_is_not_a_baseline():
    # without a baseline the reference is 2 × ULN: 501 on day 10 is not enough
    t = patient().ferritin(day=1, ng_ml=250).ferritin(day=10, ng_ml=501)
    t.fibrinogen(day=10, mg_dl=120)
    assert iec(run(t.events)) == []


def test_rapid_2_fold_rise_within_72_hours_meets_the_ferritin_criterion():
    # 250 → 500 ng/mL: below 2 × ULN, but doubled within exactly 72 h
    t = patient().ferritin(day=8, ng_ml=250).ferritin(day=11, ng_ml=500)
    t.fibrinogen(day=11, mg_dl=120)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    assert "2-fold rise within 72 h from 250 ng/mL (day 8, accession P1-A1)" in alerts[0].summary


def test_2_fold_rise_over_73_hours_does_not_meet_the_criterion():
    t = patient().ferritin(day=8, ng_ml=250).ferritin(day=11, ng_ml=500, hour=9)
    t.fibrinogen(day=11, mg_dl=120)
    assert iec(run(t.events)) == []


def test_rise_just_short_of_2_fold_does_not_meet_the_criterion():
    t = patient().ferritin(day=8, ng_ml=250).ferritin(day=10, ng_ml=499)
    t.fibrinogen(day=10, mg_dl=120)
    assert iec(run(t.events)) == []


def test_ferritin_alone_never_alerts():
    assert iec(run(patient().ferritin(day=10, ng_ml=20000).events)) == []


# --- supporting categories ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("analyte", "value", "category", "alerts"),
    [
        (Analyte.FIBRINOGEN, 149, "hypofibrinogenemia", True),
        (Analyte.FIBRINOGEN, 150, "hypofibrinogenemia", False),
        (Analyte.ALT, 201, "transaminitis", True),
        (Analyte.ALT, 200, "transaminitis", False),
        (Analyte.AST, 201, "transaminitis", True),
        (Analyte.AST, 200, "transaminitis", False),
        (Analyte.TRIGLYCERIDES, 266, "hypertriglyceridemia", True),
        (Analyte.TRIGLYCERIDES, 265, "hypertriglyceridemia", False),
    ],
)
def test_each_laboratory_category_supports_the_ferritin_criterion_beyond_its_threshold(
    analyte, value, category, alerts, documented
):
    t = patient().ferritin(day=10, ng_ml=3000).lab(analyte, day=11, value=value)
    result = only(run(t.events))
    assert iec(result) == (RAISED if alerts else [])
    if alerts:
        assert category in result[0].summary
        assert result[0].event_time == at_day(11)
        documented(result[0], analytes={Analyte.FERRITIN, analyte})


@pytest.mark.parametrize(
    ("analyte", "peak", "fallen_to", "alerts"),
    [
        (Analyte.ANC, 2000, 1000, True),
        (Analyte.ANC, 2000, 1001, False),
        (Analyte.PLATELETS, 100, 50, True),
        (Analyte.PLATELETS, 100, 51, False),
    ],
)
def test_cytopenia_is_a_fall_of_at_least_50_percent_from_the_7_day_peak(
    analyte, peak, fallen_to, alerts
):
    t = patient().lab(analyte, day=8, value=peak).lab(analyte, day=10, value=fallen_to)
    t.ferritin(day=10, ng_ml=3000)
    result = only(run(t.events))
    assert iec(result) == (RAISED if alerts else [])
    if alerts:
        assert "cytopenia" in result[0].summary
        assert {(e.analyte, e.value) for e in result[0].evidence} >= {(analyte, fallen_to)}


def test_cytopenia_peak_more_than_7_days_earlier_does_not_count():
    t = patient().anc(day=8, per_ul=2000).anc(day=16, per_ul=900).ferritin(day=16, ng_ml=3000)
    assert iec(run(t.events)) == []


def test_fall_from_a_peak_before_day_7_is_lymphodepletion_not_iec_hs():
    t = patient().anc(day=5, per_ul=2000).anc(day=8, per_ul=800).ferritin(day=8, ng_ml=3000)
    assert iec(run(t.events)) == []


def test_ldh_above_uln_is_context_only_and_never_alerts_alone():
    t = patient().ferritin(day=10, ng_ml=3000).lab(Analyte.LDH, day=10, value=1200)
    assert iec(run(t.events)) == []


def test_ldh_above_uln_is_shown_as_context_with_a_counted_category():
    t = patient().ferritin(day=10, ng_ml=3000).lab(Analyte.LDH, day=10, value=1200)
    alerts = only(run(t.fibrinogen(day=10, mg_dl=120).events))
    assert iec(alerts) == RAISED
    (context,) = alerts[0].context
    assert (context.analyte, context.value, context.unit) == (Analyte.LDH, 1200.0, "U/L")
    assert Analyte.LDH not in {e.analyte for e in alerts[0].evidence}
    assert "LDH above 250 U/L (context)" in alerts[0].summary


@pytest.mark.parametrize(("support_day", "alerts"), [(17, True), (18, False)])
def test_supporting_result_must_be_within_7_days_after_the_ferritin(support_day, alerts):
    t = patient().ferritin(day=10, ng_ml=3000).fibrinogen(day=support_day, mg_dl=120)
    assert iec(run(t.events)) == (RAISED if alerts else [])


@pytest.mark.parametrize(("ferritin_day", "alerts"), [(14, True), (15, False)])
def test_supporting_result_may_precede_the_ferritin_by_up_to_7_days(ferritin_day, alerts):
    t = patient().fibrinogen(day=7, mg_dl=120).ferritin(day=ferritin_day, ng_ml=3000)
    result = only(run(t.events))
    assert iec(result) == (RAISED if alerts else [])
    if alerts:
        assert result[0].event_time == at_day(ferritin_day)


# --- timing: day 7 or later, or after CRS resolved -------------------------------------------


def test_results_before_day_7_do_not_count():
    t = patient().ferritin(day=6, ng_ml=3000).fibrinogen(day=6, mg_dl=120)
    assert iec(run(t.events)) == []


def test_results_on_day_7_count():
    t = patient().ferritin(day=7, ng_ml=3000).fibrinogen(day=7, mg_dl=120)
    assert iec(run(t.events)) == RAISED


def test_supporting_result_before_day_7_does_not_count():
    t = patient().fibrinogen(day=6, mg_dl=120).ferritin(day=8, ng_ml=3000)
    assert iec(run(t.events)) == []


def test_rise_from_a_ferritin_before_day_7_is_the_crs_not_iec_hs():
    # 300 on day 5 → 700 on day 7: doubled within 48 h, but the earlier value falls in the CRS
    # days the timing rule leaves out ("only results collected on day 7 or later count"); the
    # baseline (day 0) is the one exception the rule names
    t = patient().ferritin(day=0, ng_ml=1000).ferritin(day=5, ng_ml=300)
    t.ferritin(day=7, ng_ml=700).fibrinogen(day=7, mg_dl=120)
    assert iec(run(t.events)) == []


def test_rise_from_a_ferritin_collected_after_crs_resolved_counts_before_day_7():
    t = patient().ferritin(day=0, ng_ml=1000).event("crs_resolved", day=4, hour=9)
    t.ferritin(day=5, ng_ml=300).ferritin(day=7, ng_ml=700).fibrinogen(day=7, mg_dl=120)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    assert "2-fold rise within 72 h from 300 ng/mL (day 5" in alerts[0].summary


def test_results_after_crs_resolved_count_before_day_7():
    t = patient().event("crs_resolved", day=5, hour=9)
    t.ferritin(day=6, ng_ml=3000).fibrinogen(day=6, mg_dl=120)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    assert alerts[0].day == 6


def test_results_collected_before_crs_resolved_still_do_not_count():
    # CRS resolved at 09:00 on day 5; these results were collected at 08:00
    t = patient().event("crs_resolved", day=5, hour=9)
    t.ferritin(day=5, ng_ml=3000).fibrinogen(day=5, mg_dl=120)
    assert iec(run(t.events)) == []


def test_crs_resolved_reported_after_the_results_re_evaluates_them():
    t = patient().ferritin(day=6, ng_ml=3000).fibrinogen(day=6, mg_dl=120)
    t.event("crs_resolved", day=5, hour=9)
    assert iec(run(t.events)) == RAISED


# --- lifecycle: categories join, resolution, new episodes ----------------------------------


def test_further_categories_joining_update_the_alert_with_all_evidence(documented):
    t = patient().ferritin(day=10, ng_ml=3000).fibrinogen(day=10, mg_dl=120)
    t.lab(Analyte.ALT, day=11, value=350).lab(Analyte.TRIGLYCERIDES, day=12, value=400)
    alerts = only(run(t.events))
    assert iec(alerts) == [*RAISED, ("updated", "critical"), ("updated", "critical")]
    assert len({a.alert_id for a in alerts}) == 1
    assert [a.event_time for a in alerts] == [at_day(10), at_day(11), at_day(12)]
    last = alerts[-1]
    for category in ("hypofibrinogenemia", "transaminitis", "hypertriglyceridemia"):
        assert category in last.summary
    documented(
        last,
        analytes={Analyte.FERRITIN, Analyte.FIBRINOGEN, Analyte.ALT, Analyte.TRIGLYCERIDES},
    )


def test_a_category_is_counted_once():
    # ALT then AST above 200: transaminitis once, so no update for the AST
    t = patient().ferritin(day=10, ng_ml=3000).lab(Analyte.ALT, day=10, value=300)
    t.lab(Analyte.AST, day=11, value=300).fibrinogen(day=11, mg_dl=140).fibrinogen(12, 130)
    assert iec(run(t.events)) == [*RAISED, ("updated", "critical")]


def test_resolved_when_ferritin_falls_below_half_of_the_episode_peak(documented):
    t = patient().ferritin(day=10, ng_ml=3000).fibrinogen(day=10, mg_dl=120)
    t.ferritin(day=11, ng_ml=4000).ferritin(day=13, ng_ml=2000)
    assert iec(run(t.events)) == RAISED  # 2000 is exactly half of the 4000 peak
    alerts = only(run(t.ferritin(day=14, ng_ml=1999).events))
    assert iec(alerts) == [*RAISED, ("resolved", "critical")]
    resolved = alerts[-1]
    assert resolved.alert_id == alerts[0].alert_id
    assert resolved.event_time == at_day(14)
    assert "peak ferritin 4000" in resolved.summary
    documented(resolved, analytes={Analyte.FERRITIN}, collected={at_day(11), at_day(14)})
    assert active(alerts) == {}


def test_new_episode_needs_ferritin_at_twice_the_lowest_since_resolution():
    t = patient().ferritin(day=10, ng_ml=3000).fibrinogen(day=10, mg_dl=120)
    t.ferritin(day=14, ng_ml=1000)  # resolved, lowest since resolution 1000
    t.fibrinogen(day=18, mg_dl=120).ferritin(day=18, ng_ml=1999)
    assert iec(run(t.events)) == [*RAISED, ("resolved", "critical")]
    alerts = only(run(t.ferritin(day=20, ng_ml=2000).events))
    assert iec(alerts) == [*RAISED, ("resolved", "critical"), *RAISED]
    assert alerts[-1].alert_id != alerts[0].alert_id
    assert alerts[-1].event_time == at_day(20)


def test_lowest_ferritin_since_resolution_keeps_falling():
    # resolved at 1000, falls to 700: 1400 (2 × 700) opens a new episode
    t = patient().ferritin(day=10, ng_ml=3000).fibrinogen(day=10, mg_dl=120)
    t.ferritin(day=14, ng_ml=1000).ferritin(day=16, ng_ml=700)
    t.ferritin(day=20, ng_ml=1400).fibrinogen(day=20, mg_dl=110)
    alerts = only(run(t.events))
    assert iec(alerts) == [*RAISED, ("resolved", "critical"), *RAISED]


def test_late_earlier_supporting_result_is_an_update_of_the_open_alert():
    # ferritin day 10, ALT day 12 → raised on day 12; a fibrinogen of day 10 arrives late.
    # rev. 2: the episode starts at the criterion ferritin (day 10) either way; the late
    # category joins as an update of the same alert.
    t = patient().ferritin(day=10, ng_ml=3000).lab(Analyte.ALT, day=12, value=300)
    t.fibrinogen(day=10, mg_dl=120)  # the day-10 fibrinogen, reported late
    alerts = only(run(t.events))
    assert [a.action for a in alerts] == [AlertAction.RAISED, AlertAction.UPDATED]
    raised, updated = alerts
    assert updated.alert_id == raised.alert_id
    assert updated.episode_start == raised.episode_start == at_day(10)
    assert "hypofibrinogenemia" in updated.summary and "hypofibrinogenemia" not in raised.summary
    assert list(active(alerts)) == [raised.alert_id]


def test_late_earlier_supporting_result_keeps_one_alert_for_the_rest_of_the_episode():
    t = patient().ferritin(day=10, ng_ml=3000).lab(Analyte.ALT, day=12, value=300)
    t.fibrinogen(day=10, mg_dl=120)  # the day-10 fibrinogen, reported late
    t.ferritin(day=13, ng_ml=3500)  # the episode goes on
    alerts = only(run(t.events))
    assert [a.action for a in alerts].count(AlertAction.RAISED) == 1
    assert AlertAction.RETRACTED not in [a.action for a in alerts]
    assert list(active(alerts)) == [alerts[0].alert_id]


def test_alert_event_time_is_the_collection_time_of_the_completing_result():
    t = patient().ferritin(day=10, ng_ml=3000).fibrinogen(day=12, mg_dl=120, hour=14)
    (alert,) = only(run(t.events))
    assert alert.event_time == at_day(12, hour=14)
    assert alert.decided_at == at_day(12, hour=14) + timedelta(hours=4)


def test_pattern_completed_after_ferritin_already_halved_is_not_left_open():
    # ferritin 3000 on day 10, 1000 on day 12 (< 50 % of the peak), fibrinogen 120 on day 13
    # (within 7 days of the day-10 ferritin): the pattern held, but is already over
    t = patient().ferritin(day=10, ng_ml=3000).ferritin(day=12, ng_ml=1000)
    alerts = only(run(t.fibrinogen(day=13, mg_dl=120).events))
    assert iec(alerts) == [*RAISED, ("resolved", "critical")]
    assert alerts[1].alert_id == alerts[0].alert_id
    assert active(alerts) == {}


# --- rev. 2: cytopenia floor, episode and peak start ----------------------------------------------


def test_rev2_iec_hs_cytopenia_floor_noise_in_profound_aplasia_is_not_a_new_cytopenia():
    # ANC 40 → 20 halves, but by 20 /µL: not a new cytopenia (policy floor 250 /µL)
    t = patient().ferritin(day=-2, ng_ml=400).anc(day=8, per_ul=40).ferritin(day=10, ng_ml=3000)
    t.anc(day=10, per_ul=20)
    assert iec(run(t.events)) == []


def test_rev2_iec_hs_cytopenia_floor_a_fall_of_250_per_ul_counts():
    t = patient().ferritin(day=-2, ng_ml=400).anc(day=8, per_ul=500).ferritin(day=10, ng_ml=3000)
    t.anc(day=10, per_ul=250)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    assert "new or worsening cytopenia" in alerts[0].summary


def test_rev2_iec_hs_platelet_floor_is_25_thousand():
    t = patient().ferritin(day=-2, ng_ml=400).platelets(day=8, k_per_ul=40)
    t.ferritin(day=10, ng_ml=3000).platelets(day=10, k_per_ul=16)
    assert iec(run(t.events)) == []
    t.platelets(day=11, k_per_ul=14)  # 40 → 14: 26 × 10³/µL and ≥ 50 %
    assert iec(run(t.events)) == RAISED


def test_rev2_iec_hs_episode_and_peak_start_at_the_first_supported_criterion_ferritin():
    # day 8: 5000 meets the criterion alone (no support within 7 days); day 20: 2000 with low
    # fibrinogen starts the episode -- its peak is 2000, not the unsupported 5000
    t = patient().ferritin(day=-2, ng_ml=400).ferritin(day=8, ng_ml=5000)
    t.ferritin(day=20, ng_ml=2000).fibrinogen(day=20, mg_dl=100)
    t.ferritin(day=24, ng_ml=1100)  # above half of 2000: still open (below half of 5000)
    alerts = only(run(t.events))
    assert iec(alerts) == RAISED
    assert alerts[0].episode_start == at_day(20)
    assert "peak ferritin 2000 ng/mL" in alerts[0].summary
    t.ferritin(day=26, ng_ml=900)
    assert iec(run(t.events)) == [("raised", "critical"), ("resolved", "critical")]


def test_rev2_iec_hs_comparison_values_carry_their_date_and_accession():
    t = patient().ferritin(day=-1, ng_ml=400).ferritin(day=9, ng_ml=300)
    t.ferritin(day=11, ng_ml=700).fibrinogen(day=11, mg_dl=100)
    (alert,) = only(run(t.events))
    assert "2-fold rise within 72 h from 300 ng/mL (day 9, accession P1-A2)" in alert.summary
    baseline = patient().ferritin(day=-1, ng_ml=300).ferritin(day=11, ng_ml=700)
    (alert,) = only(run(baseline.fibrinogen(day=11, mg_dl=100).events))
    assert "> 2 × baseline (300 ng/mL on day -1, accession P1-A1)" in alert.summary
