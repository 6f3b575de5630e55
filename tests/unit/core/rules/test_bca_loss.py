"""Loss of B-cell aplasia (docs/clinical-spec.md §1; streams/core/rules/bca_loss.py).

Aplasia: CD19+ < 1 % of lymphocytes or < 10 cells/µL (institution-settable 1-3 %, 10-50 /µL).
Established by the first aplastic specimen after day 0; loss confirmed by a second qualifying
specimen ≥ 7 days after the first, or at once by one result ≥ 2× its threshold. Onset day ≤ 183 →
critical, later → warning. Resolved when aplasia is re-established.
"""

import pytest

from schemas.vocab import AlertAction, Analyte, RuleName
from streams.core.policy import Policy
from streams.testing import Timeline, actions, active, at_day, run

BCA = RuleName.BCA_LOSS
PCT_3 = Policy(bca_cd19_pct_threshold=3.0)
ABS_50 = Policy(bca_cd19_abs_threshold_per_ul=50.0)
ONE_SPECIMEN = Policy(bca_confirmations=1)


def bca(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, BCA)]


def only(alerts):
    return [a for a in alerts if a.rule is BCA]


def patient_in_aplasia(day: int = 14, pct: float = 0.1) -> Timeline:
    """Infused on day 0; B-cell aplasia established by a CD19 % on ``day``."""
    return Timeline("P1").infusion(day=0).cd19_pct(day=day, pct=pct)


# --- confirmation: a second qualifying specimen at least 7 days after the first -------------


def test_loss_confirmed_by_second_specimen_7_days_later_is_critical_within_6_months(
    documented,
):
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.2)
    alerts = [a for a in run(t.events) if a.rule is BCA]

    assert bca(alerts) == [("raised", "critical")]
    alert = alerts[0]
    assert alert.event_time == at_day(67)
    assert alert.episode_start == at_day(60)
    assert alert.day == 67
    documented(
        alert,
        analytes={Analyte.CD19_PCT},
        collected={at_day(14), at_day(60), at_day(67)},
    )
    assert [(e.value, e.unit, e.accession) for e in alert.evidence] == [
        (0.1, "%", "P1-A1"),
        (1.5, "%", "P1-A2"),
        (1.2, "%", "P1-A3"),
    ]
    assert "day 60" in alert.summary and "within 6 months" in alert.summary
    assert "1 %" in alert.threshold and "10 cells/µL" in alert.threshold
    assert "MRD" in alert.recommendation and "consolidative HCT" in alert.recommendation
    assert any("ELIANA/ENSIGN" in ref for ref in alert.references)


def test_second_qualifying_specimen_6_days_later_does_not_confirm_the_loss():
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.5).cd19_pct(day=66, pct=1.2)
    assert bca(run(t.events)) == []


def test_third_specimen_7_days_after_the_onset_confirms_even_after_a_6_day_one():
    t = (
        patient_in_aplasia()
        .cd19_pct(day=60, pct=1.5)
        .cd19_pct(day=66, pct=1.2)
        .cd19_pct(day=67, pct=1.1)
    )
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(67)
    assert alerts[0].episode_start == at_day(60)


def test_single_qualifying_specimen_raises_nothing_until_confirmed():
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.9)
    assert bca(run(t.events)) == []


def test_one_confirmation_policy_raises_at_the_first_qualifying_specimen():
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.2)
    alerts = [a for a in run(t.events, ONE_SPECIMEN) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(60)
    assert "1 qualifying specimen" in alerts[0].threshold


# --- severity: the onset day decides (day ≤ 183 critical, later warning) ----------------------


@pytest.mark.parametrize(
    ("onset_day", "severity", "wording"),
    [(183, "critical", "within 6 months"), (184, "warning", "after 6 months")],
)
def test_onset_day_183_is_within_6_months_and_day_184_is_not(onset_day, severity, wording):
    t = patient_in_aplasia().cd19_pct(day=onset_day, pct=1.5).cd19_pct(day=onset_day + 7, pct=1.4)
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", severity)]
    assert f"Onset on day {onset_day}" in alerts[0].summary
    assert wording in alerts[0].summary


def test_late_loss_after_6_months_recommends_monitoring_not_relapse_work_up_as_certain(
    documented,
):
    t = patient_in_aplasia(day=150).cd19_pct(day=200, pct=1.5).cd19_pct(day=207, pct=1.4)
    alert = next(a for a in run(t.events) if a.rule is BCA)
    assert alert.severity.value == "warning"
    assert "does not necessarily imply relapse" in alert.recommendation
    documented(alert, analytes={Analyte.CD19_PCT}, collected={at_day(200), at_day(207)})


def test_severity_follows_the_onset_not_the_confirming_specimen():
    # onset on day 180 (≤ 183), confirmed on day 187 (> 183): still an early loss
    t = patient_in_aplasia().cd19_pct(day=180, pct=1.5).cd19_pct(day=187, pct=1.4)
    assert bca(run(t.events)) == [("raised", "critical")]


# --- immediate loss: one result at ≥ twice its threshold -------------------------------------


@pytest.mark.parametrize(
    ("policy", "analyte", "value", "raised"),
    [
        (Policy(), Analyte.CD19_PCT, 2.0, True),
        (Policy(), Analyte.CD19_PCT, 1.99, False),
        (Policy(), Analyte.CD19_ABS, 20.0, True),
        (Policy(), Analyte.CD19_ABS, 19.9, False),
        (PCT_3, Analyte.CD19_PCT, 6.0, True),
        (PCT_3, Analyte.CD19_PCT, 5.9, False),
        (ABS_50, Analyte.CD19_ABS, 100.0, True),
        (ABS_50, Analyte.CD19_ABS, 99.0, False),
    ],
)
def test_one_result_at_twice_the_threshold_confirms_the_loss_at_once(
    policy, analyte, value, raised
):
    t = patient_in_aplasia().lab(analyte, day=60, value=value)
    alerts = [a for a in run(t.events, policy) if a.rule is BCA]
    assert bca(alerts) == ([("raised", "critical")] if raised else [])
    if raised:
        assert alerts[0].event_time == at_day(60)
        assert alerts[0].episode_start == at_day(60)


def test_result_at_twice_the_threshold_after_a_pending_onset_confirms_early():
    # onset 1.5 % on day 60, 2.4 % three days later: loss confirmed on day 63, onset day 60
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.5).cd19_pct(day=63, pct=2.4)
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    assert alerts[0].event_time == at_day(63)
    assert alerts[0].episode_start == at_day(60)


# --- aplasia thresholds: 1 % / 3 % and 10 / 50 per µL, both sides -------------------------


def test_cd19_0_99_percent_establishes_aplasia_under_the_1_percent_policy():
    t = patient_in_aplasia(pct=0.99).cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.5)
    assert bca(run(t.events)) == [("raised", "critical")]


def test_cd19_exactly_1_percent_is_b_cells_back_not_aplasia():
    # 1.0 % on day 14 is not aplasia: nothing is established, so no loss can follow
    t = patient_in_aplasia(pct=1.0).cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.5)
    assert bca(run(t.events)) == []
    # ... and 1.0 % after established aplasia is a qualifying specimen
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.0).cd19_pct(day=67, pct=1.0)
    assert bca(run(t.events)) == [("raised", "critical")]


def test_cd19_2_5_percent_is_aplasia_under_the_3_percent_policy_but_a_loss_under_1_percent():
    t = patient_in_aplasia(pct=0.5).cd19_pct(day=60, pct=2.5).cd19_pct(day=67, pct=2.5)
    assert bca(run(t.events, PCT_3)) == []
    assert bca(run(t.events)) == [("raised", "critical")]


def test_cd19_exactly_3_percent_is_b_cells_back_under_the_3_percent_policy():
    t = patient_in_aplasia(pct=2.9).cd19_pct(day=60, pct=3.0).cd19_pct(day=67, pct=3.0)
    alerts = [a for a in run(t.events, PCT_3) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    assert "3 %" in alerts[0].threshold


@pytest.mark.parametrize(
    ("policy", "aplastic", "qualifying"),
    [(Policy(), 9.9, 10.0), (ABS_50, 49.9, 50.0)],
)
def test_absolute_cd19_count_below_threshold_is_aplasia_and_at_threshold_is_not(
    policy, aplastic, qualifying, documented
):
    t = (
        Timeline("P1")
        .infusion(day=0)
        .cd19_abs(day=14, per_ul=aplastic)
        .cd19_abs(day=60, per_ul=qualifying)
        .cd19_abs(day=67, per_ul=qualifying)
    )
    alerts = [a for a in run(t.events, policy) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    documented(alerts[0], analytes={Analyte.CD19_ABS})
    assert {e.unit for e in alerts[0].evidence} == {"/uL"}
    # a count at the threshold on day 14 establishes nothing
    t = (
        Timeline("P1")
        .infusion(day=0)
        .cd19_abs(day=14, per_ul=qualifying)
        .cd19_abs(day=60, per_ul=qualifying)
        .cd19_abs(day=67, per_ul=qualifying)
    )
    assert bca(run(t.events, policy)) == []


def test_absolute_count_of_30_per_ul_is_aplasia_under_the_50_policy_but_a_loss_under_10():
    t = (
        Timeline("P1")
        .infusion(day=0)
        .cd19_abs(day=14, per_ul=2)
        .cd19_abs(day=60, per_ul=30)
        .cd19_abs(day=67, per_ul=30)
    )
    assert bca(run(t.events, ABS_50)) == []
    assert bca(run(t.events)) == [("raised", "critical")]


# --- mixed specimens: aplastic when ANY CD19 result is below its threshold -------------------


def test_specimen_with_percent_back_but_absolute_count_low_is_aplastic():
    # day 60: 1.5 % but 5 /µL → aplastic; so day 67 is the onset, not a confirmation
    t = (
        patient_in_aplasia()
        .cd19_pct(day=60, pct=1.5)
        .cd19_abs(day=60, per_ul=5)
        .cd19_pct(day=67, pct=1.2)
        .cd19_abs(day=67, per_ul=12)
    )
    assert bca(run(t.events)) == []
    t.cd19_pct(day=74, pct=1.3).cd19_abs(day=74, per_ul=15)
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    assert alerts[0].episode_start == at_day(67)
    assert alerts[0].event_time == at_day(74)
    cited = {(e.analyte, e.collected_at) for e in alerts[0].evidence}
    assert {(Analyte.CD19_PCT, at_day(67)), (Analyte.CD19_ABS, at_day(67))} <= cited


def test_mixed_specimen_establishes_aplasia_when_only_the_absolute_count_is_low():
    t = (
        Timeline("P1")
        .infusion(day=0)
        .cd19_pct(day=14, pct=1.5)
        .cd19_abs(day=14, per_ul=4)
        .cd19_pct(day=60, pct=1.5)
        .cd19_abs(day=60, per_ul=15)
        .cd19_pct(day=67, pct=1.5)
        .cd19_abs(day=67, per_ul=15)
    )
    assert bca(run(t.events)) == [("raised", "critical")]


def test_mixed_specimen_with_one_result_at_twice_its_threshold_is_an_immediate_loss():
    # 2.4 % (≥ 2 × 1 %) and 12 /µL (≥ 10): qualifying, and one result is ≥ twice its threshold
    t = patient_in_aplasia().cd19_pct(day=60, pct=2.4).cd19_abs(day=60, per_ul=12)
    assert bca(run(t.events)) == [("raised", "critical")]


def test_mixed_specimen_with_a_result_at_twice_threshold_but_another_below_is_still_aplastic():
    # the low absolute count is reported first: the specimen never qualifies
    t = patient_in_aplasia().cd19_abs(day=60, per_ul=6).cd19_pct(day=60, pct=2.4)
    assert bca(run(t.events)) == []


def test_low_absolute_count_of_the_same_specimen_arriving_later_retracts_the_immediate_loss():
    # 2.4 % alone was an immediate loss; the 6 /µL of the same specimen, sent in a later
    # message, makes it aplastic
    t = patient_in_aplasia().cd19_pct(day=60, pct=2.4).cd19_abs(day=60, per_ul=6)
    alerts = [a for a in run(t.events, apart=True) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical"), ("retracted", "critical")]
    assert alerts[1].alert_id == alerts[0].alert_id
    assert active(alerts) == {}


def test_specimen_results_that_arrive_together_are_applied_together():
    # rev. 2 "Same specimen": the % and the absolute count of one specimen, consecutive in one
    # feed, are evaluated once -- half a specimen never raises a critical alert
    t = patient_in_aplasia().cd19_pct(day=60, pct=2.4).cd19_abs(day=60, per_ul=6)
    assert bca(run(t.events)) == []


# --- establishment: only an aplastic specimen after day 0 --------------------------------------


def test_no_loss_without_established_aplasia_even_with_high_cd19():
    # CAR T never produced aplasia: primary non-response, not a loss of BCA
    t = Timeline("P1").infusion(day=0).cd19_pct(day=14, pct=5.0).cd19_pct(day=28, pct=6.0)
    assert bca(run(t.events)) == []


def test_aplastic_specimens_on_day_0_and_before_do_not_establish_aplasia():
    t = (
        Timeline("P1")
        .infusion(day=0)
        .cd19_pct(day=-3, pct=0.1)
        .cd19_pct(day=0, pct=0.1, hour=20)  # after the infusion, still day 0
        .cd19_pct(day=60, pct=1.5)
        .cd19_pct(day=67, pct=1.5)
    )
    assert bca(run(t.events)) == []


def test_aplastic_specimen_on_day_1_establishes_aplasia():
    t = patient_in_aplasia(day=1).cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.5)
    assert bca(run(t.events)) == [("raised", "critical")]


# --- an aplastic specimen in between cancels the pending loss -----------------------------


def test_aplastic_specimen_between_onset_and_confirmation_cancels_the_pending_loss():
    t = (
        patient_in_aplasia()
        .cd19_pct(day=60, pct=1.5)
        .cd19_pct(day=63, pct=0.4)
        .cd19_pct(day=67, pct=1.2)
    )
    assert bca(run(t.events)) == []
    # day 67 is a fresh onset: day 74 confirms it
    t.cd19_pct(day=74, pct=1.1)
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical")]
    assert alerts[0].episode_start == at_day(67)
    assert "day 67 (onset)" in alerts[0].summary


def test_late_aplastic_specimen_between_onset_and_confirmation_retracts_the_alert():
    # day 63 was collected before the confirming day-67 specimen but arrives after it
    t = (
        patient_in_aplasia()
        .cd19_pct(day=60, pct=1.5)
        .cd19_pct(day=67, pct=1.2)
        .cd19_pct(day=63, pct=0.4)
    )
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical"), ("retracted", "critical")]
    assert alerts[0].alert_id == alerts[1].alert_id
    assert active(alerts) == {}


# --- resolution and new episodes ------------------------------------------------------------


def test_loss_resolves_when_aplasia_is_re_established_after_reinfusion(documented):
    t = (
        patient_in_aplasia()
        .cd19_pct(day=60, pct=1.5)
        .cd19_pct(day=67, pct=1.2)
        .event("reinfusion", day=80)
        .cd19_pct(day=95, pct=0.2)
    )
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "critical"), ("resolved", "critical")]
    raised, resolved = alerts
    assert resolved.alert_id == raised.alert_id
    assert resolved.event_time == at_day(95)
    assert "re-established" in resolved.summary
    assert "reinfusion recorded on day 80" in resolved.summary
    documented(resolved, analytes={Analyte.CD19_PCT}, collected={at_day(95)})


def test_second_loss_after_re_established_aplasia_is_a_new_episode_with_a_new_alert_id():
    t = (
        patient_in_aplasia()
        .cd19_pct(day=60, pct=1.5)
        .cd19_pct(day=67, pct=1.2)
        .cd19_pct(day=95, pct=0.2)
        .cd19_pct(day=200, pct=1.5)
        .cd19_pct(day=207, pct=1.6)
    )
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [
        ("raised", "critical"),
        ("resolved", "critical"),
        ("raised", "warning"),
    ]
    assert alerts[2].alert_id != alerts[0].alert_id
    assert [a.episode_start for a in active(alerts).values()] == [at_day(200)]


def test_further_qualifying_specimens_of_an_ongoing_loss_raise_nothing_more():
    t = patient_in_aplasia()
    for day in (60, 67, 74, 81, 88):
        t.cd19_pct(day=day, pct=4.0)
    assert bca(run(t.events)) == [("raised", "critical")]


def test_reinfusion_does_not_move_day_0():
    # reinfusion on day 100; the loss with onset on day 190 is still after 6 months of day 0
    t = (
        patient_in_aplasia(day=30)
        .event("reinfusion", day=100)
        .cd19_pct(day=120, pct=0.1)
        .cd19_pct(day=190, pct=1.5)
        .cd19_pct(day=197, pct=1.5)
    )
    alerts = [a for a in run(t.events) if a.rule is BCA]
    assert bca(alerts) == [("raised", "warning")]
    assert "Onset on day 190" in alerts[0].summary
    assert alerts[0].day == 197


def test_late_earlier_qualifying_specimen_is_an_update_of_the_open_alert():
    # loss raised on day 67 (onset day 60); the day-55 specimen arrives late: the loss began
    # earlier. The condition held all along: one alert, never retracted.
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.2)
    t.cd19_pct(day=55, pct=1.3)  # collected before the onset, reported late
    alerts = only(run(t.events))
    assert [a.action for a in alerts] == [AlertAction.RAISED, AlertAction.UPDATED]
    raised, updated = alerts
    assert updated.alert_id == raised.alert_id
    assert updated.episode_start < raised.episode_start
    assert list(active(alerts)) == [raised.alert_id]


def test_late_earlier_qualifying_specimen_keeps_one_alert_for_the_rest_of_the_episode():
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.2)
    t.cd19_pct(day=55, pct=1.3)  # collected before the onset, reported late
    t.cd19_pct(day=80, pct=2.0)  # B cells still back
    alerts = only(run(t.events))
    assert [a.action for a in alerts].count(AlertAction.RAISED) == 1
    assert AlertAction.RETRACTED not in [a.action for a in alerts]
    assert list(active(alerts)) == [alerts[0].alert_id]


def test_a_corrected_report_of_cd19_pct_and_count_never_alerts_on_half_a_specimen():
    # day 60: CD19 1.5 % and 5 /µL (aplastic by the count). The lab corrects both in one report:
    # 0.5 % and 60 /µL -- aplastic by the percentage. Half-corrected (1.5 % and 60 /µL) the
    # specimen would look like a loss; the corrected report is applied as one group
    t = patient_in_aplasia().cd19_pct(day=60, pct=1.5).cd19_abs(day=60, per_ul=5)
    pct, count = t.events[-2].accession, t.events[-1].accession
    t.cd19_abs(day=60, per_ul=60, status="corrected", accession=count)
    t.cd19_pct(day=60, pct=0.5, status="corrected", accession=pct)
    assert bca(run(t.events, ONE_SPECIMEN)) == []
    # the same corrections in two reports (the second on its own, later) do pass through it
    later = t.events[-1].model_copy(update={"resulted_at": at_day(62)})
    assert bca(run([*t.events[:-1], later], ONE_SPECIMEN)) == [
        ("raised", "critical"),
        ("retracted", "critical"),
    ]
