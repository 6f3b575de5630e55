"""Hypogammaglobulinemia (clinical-rules.md section 2; streams/rules/hypogammaglobulinemia.py).

IgG < 400 mg/dL (exactly 400 does not alert) → warning, before and after day 0; one alert per
episode, resolved by the next IgG ≥ threshold; the alert states the days since the last IVIG dose.
Values here are canonical mg/dL (g/L → mg/dL is the ingest's job).
"""

import pytest

from schemas.vocab import AlertAction, Analyte, RuleName
from streams.core.policy import Policy
from streams.testing import Timeline, actions, active, at_day, run

HYPO = RuleName.HYPOGAMMAGLOBULINEMIA


def hypo(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, HYPO)]


def only(alerts):
    return [a for a in alerts if a.rule is HYPO]


def patient() -> Timeline:
    return Timeline("P1").infusion(day=0)


def test_igg_exactly_400_mg_dl_does_not_alert():
    assert hypo(run(patient().igg(day=30, mg_dl=400).events)) == []


def test_igg_399_mg_dl_raises_a_warning_with_its_evidence(documented):
    alerts = only(run(patient().igg(day=30, mg_dl=399).events))
    assert hypo(alerts) == [("raised", "warning")]
    alert = alerts[0]
    assert alert.event_time == at_day(30)
    assert alert.day == 30
    documented(alert, analytes={Analyte.IGG}, collected={at_day(30)})
    (evidence,) = alert.evidence
    assert (evidence.value, evidence.unit, evidence.accession) == (399.0, "mg/dL", "P1-A1")
    assert "IgG 399 mg/dL on day 30" in alert.summary
    assert "400 mg/dL" in alert.threshold and "4 g/L" in alert.threshold
    assert "immunoglobulin replacement" in alert.recommendation
    assert any("Hypogammaglobulinemia" in ref for ref in alert.references)


def test_low_igg_before_day_0_alerts_too():
    # baseline IgG 3 days before the infusion, enrollment record already received
    alerts = only(run(patient().igg(day=-3, mg_dl=320).events))
    assert hypo(alerts) == [("raised", "warning")]
    assert alerts[0].day == -3
    assert alerts[0].evidence[0].day == -3


def test_low_igg_before_and_after_day_0_is_one_episode():
    t = patient().igg(day=-3, mg_dl=320).igg(day=30, mg_dl=300).igg(day=60, mg_dl=280)
    alerts = only(run(t.events))
    assert hypo(alerts) == [("raised", "warning")]
    assert alerts[0].episode_start == at_day(-3)


def test_one_alert_per_episode_while_igg_stays_low():
    t = patient().igg(day=10, mg_dl=350).igg(day=40, mg_dl=300).igg(day=70, mg_dl=250)
    assert hypo(run(t.events)) == [("raised", "warning")]


def test_resolved_by_the_next_igg_at_exactly_the_threshold(documented):
    t = patient().igg(day=10, mg_dl=350).igg(day=40, mg_dl=300).igg(day=70, mg_dl=400)
    alerts = only(run(t.events))
    assert hypo(alerts) == [("raised", "warning"), ("resolved", "warning")]
    resolved = alerts[1]
    assert resolved.alert_id == alerts[0].alert_id
    assert resolved.event_time == at_day(70)
    documented(resolved, analytes={Analyte.IGG}, collected={at_day(10), at_day(40), at_day(70)})
    assert "Resolved: IgG 400 mg/dL on day 70" in resolved.summary
    assert active(alerts) == {}


def test_igg_falling_again_after_recovery_is_a_new_episode_with_a_new_alert_id():
    t = patient().igg(day=10, mg_dl=350).igg(day=40, mg_dl=450).igg(day=70, mg_dl=380)
    alerts = only(run(t.events))
    assert hypo(alerts) == [
        ("raised", "warning"),
        ("resolved", "warning"),
        ("raised", "warning"),
    ]
    assert alerts[2].alert_id != alerts[0].alert_id
    assert alerts[2].episode_start == at_day(70)


def test_alert_states_days_since_the_last_ivig_dose_before_the_igg():
    # IVIG on days 5 and 20; IgG on day 34 measured 14 days after the last dose
    t = patient().event("ivig_given", day=5).event("ivig_given", day=20).igg(day=34, mg_dl=350)
    (alert,) = only(run(t.events))
    assert "Last IVIG dose 14 days before this IgG (day 20)" in alert.summary


def test_alert_without_any_ivig_dose_says_none_was_recorded():
    (alert,) = only(run(patient().igg(day=34, mg_dl=350).events))
    assert "No immunoglobulin (IVIG) dose recorded" in alert.summary


def test_ivig_dose_after_the_igg_is_not_stated_as_its_context():
    t = patient().igg(day=34, mg_dl=350).event("ivig_given", day=35)
    (alert,) = only(run(t.events))
    assert "No immunoglobulin (IVIG) dose recorded" in alert.summary


def test_ivig_event_alone_raises_nothing():
    assert hypo(run(patient().event("ivig_given", day=20).events)) == []


@pytest.mark.parametrize(("igg_mg_dl", "alerts"), [(499, True), (500, False)])
def test_institution_threshold_of_500_mg_dl(igg_mg_dl, alerts):
    policy = Policy(igg_threshold_mg_dl=500)
    result = hypo(run(patient().igg(day=30, mg_dl=igg_mg_dl).events, policy))
    assert result == ([("raised", "warning")] if alerts else [])


def test_late_earlier_low_igg_is_an_update_of_the_open_alert():
    # low IgG on day 20 raised; the day-10 IgG (also low) arrives late: still one episode
    t = patient().igg(day=20, mg_dl=300)
    t.igg(day=10, mg_dl=350)  # collected earlier, reported late: the episode began on day 10
    alerts = only(run(t.events))
    assert [a.action for a in alerts] == [AlertAction.RAISED, AlertAction.UPDATED]
    raised, updated = alerts
    assert updated.alert_id == raised.alert_id
    assert updated.episode_start < raised.episode_start
    assert list(active(alerts)) == [raised.alert_id]


def test_late_earlier_low_igg_keeps_one_alert_for_the_rest_of_the_episode():
    t = patient().igg(day=20, mg_dl=300)
    t.igg(day=10, mg_dl=350)  # collected earlier, reported late: the episode began on day 10
    t.igg(day=50, mg_dl=280)  # still low
    alerts = only(run(t.events))
    assert [a.action for a in alerts].count(AlertAction.RAISED) == 1
    assert AlertAction.RETRACTED not in [a.action for a in alerts]
    assert list(active(alerts)) == [alerts[0].alert_id]


# --- rev. 2: IVIG 28-day window ---------------------------------------------------------------


def test_rev2_ivig_dose_within_28_days_is_stated_as_the_explanation():
    t = patient().event("ivig_given", day=30).igg(day=58, mg_dl=350)
    (alert,) = only(run(t.events))
    assert "Last IVIG dose 28 days before this IgG (day 30)" in alert.summary


def test_rev2_ivig_dose_older_than_28_days_is_not_offered_as_an_explanation():
    t = patient().event("ivig_given", day=30).igg(day=59, mg_dl=350)
    (alert,) = only(run(t.events))
    assert "reflects the infusion" not in alert.summary
    assert "No IVIG dose in the 28 days before this IgG (last dose day 30)" in alert.summary


def test_rev2_resolution_by_an_igg_soon_after_a_dose_says_so():
    t = patient().igg(day=30, mg_dl=300).event("ivig_given", day=35).igg(day=45, mg_dl=700)
    alerts = only(run(t.events))
    assert hypo(alerts) == [("raised", "warning"), ("resolved", "warning")]
    assert "Last IVIG dose 10 days before this IgG (day 35)" in alerts[1].summary


def test_rev2_ivig_window_is_a_policy_setting():
    t = patient().event("ivig_given", day=30).igg(day=50, mg_dl=350)
    (alert,) = only(run(t.events, Policy(ivig_effect_days=14)))
    assert "reflects the infusion" not in alert.summary
