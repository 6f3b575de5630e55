"""MRD positivity (docs/clinical-spec.md §5; streams/core/rules/mrd_positive.py).

Any detected MRD collected after day 0 (flow, qPCR or NGS), at any level including "detected,
below the limit of quantification" → critical. A rising level is ``updated``, not a new alert;
resolved by a later undetectable result. "Not detected" is never turned into 0.
"""

import pytest

from schemas.vocab import AlertAction, Analyte, MrdMethod, RuleName
from streams.testing import Timeline, actions, active, at_day, run

MRD = RuleName.MRD_POSITIVE


def mrd(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, MRD)]


def only(alerts):
    return [a for a in alerts if a.rule is MRD]


def patient() -> Timeline:
    return Timeline("P1").infusion(day=0)


def test_mrd_detected_below_the_limit_of_quantification_is_critical(documented):
    t = patient().mrd(day=28, fraction=None, detected=True, method="flow", sensitivity=1e-4)
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical")]
    alert = alerts[0]
    assert alert.event_time == at_day(28)
    (evidence,) = alert.evidence
    assert evidence.value is None
    assert evidence.detected is True
    assert evidence.method is MrdMethod.FLOW
    assert evidence.sensitivity == 1e-4
    assert evidence.unit == "1"
    assert "detected, below the limit of quantification" in alert.summary
    documented(alert, analytes={Analyte.MRD}, collected={at_day(28)})
    assert "consolidative HCT" in alert.recommendation
    assert "CD19" in alert.recommendation
    assert "limit of quantification" in alert.threshold


@pytest.mark.parametrize("method", ["flow", "pcr", "ngs"])
def test_detected_mrd_by_any_method_is_critical(method):
    t = patient().mrd(day=28, fraction=0.0003, detected=True, method=method)
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical")]
    assert f"by {method}" in alerts[0].summary
    assert alerts[0].evidence[0].value == 0.0003
    assert alerts[0].evidence[0].method is MrdMethod(method)


def test_very_low_ngs_level_of_one_per_million_is_still_positive():
    t = patient().mrd(day=90, fraction=1e-6, detected=True, method="ngs", sensitivity=1e-6)
    assert mrd(run(t.events)) == [("raised", "critical")]


@pytest.mark.parametrize("sensitivity", [1e-4, 1e-6, None])
def test_mrd_not_detected_never_alerts(sensitivity):
    t = patient().mrd(day=28, fraction=None, detected=False, sensitivity=sensitivity)
    t.mrd(day=90, fraction=None, detected=False, sensitivity=sensitivity)
    assert mrd(run(t.events)) == []


def test_mrd_not_detected_resolves_the_alert_and_stays_not_detected_in_the_evidence(
    documented,
):
    t = patient().mrd(day=28, fraction=0.001, detected=True)
    t.mrd(day=60, fraction=None, detected=False, sensitivity=1e-6)
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical"), ("resolved", "critical")]
    resolved = alerts[1]
    assert resolved.alert_id == alerts[0].alert_id
    assert resolved.event_time == at_day(60)
    cleared = resolved.evidence[-1]
    assert (cleared.value, cleared.detected, cleared.sensitivity) == (None, False, 1e-6)
    assert "not detected" in resolved.summary
    documented(resolved, analytes={Analyte.MRD}, collected={at_day(28), at_day(60)})
    assert active(alerts) == {}


def test_rising_level_is_an_update_of_the_same_alert_not_a_new_alert():
    t = patient().mrd(day=28, fraction=None, detected=True)
    t.mrd(day=45, fraction=0.0005, detected=True).mrd(day=60, fraction=0.002, detected=True)
    alerts = only(run(t.events))
    assert mrd(alerts) == [
        ("raised", "critical"),
        ("updated", "critical"),
        ("updated", "critical"),
    ]
    assert len({a.alert_id for a in alerts}) == 1
    assert [a.event_time for a in alerts] == [at_day(28), at_day(45), at_day(60)]
    assert (Analyte.MRD, 0.002) in {(e.analyte, e.value) for e in alerts[-1].evidence}
    assert "0.2 %" in alerts[-1].summary


def test_falling_but_detected_level_raises_nothing_more():
    t = patient().mrd(day=28, fraction=0.002, detected=True)
    t.mrd(day=60, fraction=0.0005, detected=True)
    assert mrd(run(t.events)) == [("raised", "critical")]


@pytest.mark.parametrize("day", [-3, 0])
def test_mrd_detected_on_or_before_day_0_does_not_count(day):
    # the pre-infusion marrow shows the disease CAR T treats, not a failure of it
    t = patient().mrd(day=day, fraction=0.05, detected=True)
    assert mrd(run(t.events)) == []
    alerts = only(run(t.mrd(day=1, fraction=0.0001, detected=True).events))
    assert mrd(alerts) == [("raised", "critical")]
    assert alerts[0].episode_start == at_day(1)


def test_mrd_detected_after_clearance_is_a_new_episode():
    t = patient().mrd(day=28, fraction=0.001, detected=True)
    t.mrd(day=60, fraction=None, detected=False).mrd(day=120, fraction=None, detected=True)
    alerts = only(run(t.events))
    assert mrd(alerts) == [
        ("raised", "critical"),
        ("resolved", "critical"),
        ("raised", "critical"),
    ]
    assert alerts[2].alert_id != alerts[0].alert_id


def test_late_earlier_detected_mrd_is_an_update_of_the_open_alert():
    # MRD detected on day 60; the day-30 result (detected below LOQ) arrives late
    t = patient().mrd(day=60, fraction=0.001, detected=True)
    t.mrd(day=30, fraction=None, detected=True)  # the day-30 marrow, reported late
    alerts = only(run(t.events))
    assert [a.action for a in alerts] == [AlertAction.RAISED, AlertAction.UPDATED]
    raised, updated = alerts
    assert updated.alert_id == raised.alert_id
    assert updated.episode_start < raised.episode_start
    assert list(active(alerts)) == [raised.alert_id]


def test_late_earlier_detected_mrd_keeps_one_alert_for_the_rest_of_the_episode():
    t = patient().mrd(day=60, fraction=0.001, detected=True)
    t.mrd(day=30, fraction=None, detected=True)  # the day-30 marrow, reported late
    t.mrd(day=90, fraction=0.003, detected=True)  # still detected, rising
    alerts = only(run(t.events))
    assert [a.action for a in alerts].count(AlertAction.RAISED) == 1
    assert AlertAction.RETRACTED not in [a.action for a in alerts]
    assert list(active(alerts)) == [alerts[0].alert_id]


# --- rev. 2: resolved only by an equally or more sensitive negative ----------------------------


def test_rev2_mrd_less_sensitive_negative_does_not_resolve_an_ngs_positive():
    t = patient().mrd(day=60, fraction=2.7e-6, detected=True, method="ngs", sensitivity=1e-6)
    t.mrd(day=90, fraction=None, detected=False, method="flow", sensitivity=1e-4)
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical"), ("updated", "critical")]
    assert "not detected at 10⁻⁴ does not exclude the NGS-detected disease" in alerts[1].summary
    assert len(active(alerts)) == 1


def test_rev2_mrd_equally_sensitive_negative_resolves():
    t = patient().mrd(day=60, fraction=None, detected=True, method="flow", sensitivity=1e-4)
    t.mrd(day=90, fraction=None, detected=False, method="flow", sensitivity=1e-4)
    assert mrd(run(t.events)) == [("raised", "critical"), ("resolved", "critical")]


def test_rev2_mrd_unknown_sensitivity_counts_as_the_methods_floor():
    # NGS positive without a stated sensitivity (10⁻⁶) is not cleared by flow without one (10⁻⁴)
    t = patient().mrd(day=60, fraction=1e-5, detected=True, method="ngs")
    t.mrd(day=90, fraction=None, detected=False, method="flow")
    t.mrd(day=120, fraction=None, detected=False, method="ngs")
    assert mrd(run(t.events)) == [
        ("raised", "critical"),
        ("updated", "critical"),
        ("resolved", "critical"),
    ]


def test_rev2_mrd_the_most_sensitive_positive_of_the_episode_sets_the_bar():
    t = patient().mrd(day=60, fraction=None, detected=True, method="flow", sensitivity=1e-4)
    t.mrd(day=75, fraction=3e-6, detected=True, method="ngs", sensitivity=1e-6)
    t.mrd(day=90, fraction=None, detected=False, method="flow", sensitivity=1e-4)
    assert [a for a in mrd(run(t.events)) if a[0] == "resolved"] == []


def test_rev2_mrd_level_reads_as_a_power_of_ten_and_a_percentage():
    t = patient().mrd(day=60, fraction=2.7e-6, detected=True, method="ngs", sensitivity=1e-6)
    (alert,) = only(run(t.events))
    assert "2.7 × 10⁻⁶ (0.00027 %)" in alert.summary
    assert alert.evidence[0].value == 2.7e-6


def test_rev2_mrd_relapse_resolves_and_no_new_alert_follows():
    t = patient().mrd(day=60, fraction=1e-3, detected=True)
    t.event("relapse", day=80, detail="lineage_switch").mrd(day=100, fraction=0.2, detected=True)
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical"), ("resolved", "critical")]
    assert "relapse recorded on day 80 (lineage_switch)" in alerts[1].summary


def test_two_assays_of_one_specimen_positive_and_negative_read_as_detected():
    t = patient().mrd(day=60, fraction=None, detected=False, method="flow", sensitivity=1e-4)
    t.mrd(day=60, fraction=5e-6, detected=True, method="ngs", sensitivity=1e-6)
    assert mrd(run(t.events)) == [("raised", "critical")]


def test_a_level_rising_again_after_a_fall_is_new_evidence():
    # 10⁻⁴ → 5 × 10⁻⁵ (falling: nothing) → 8 × 10⁻⁵ (rising again: updated), below the peak
    t = (
        patient()
        .mrd(day=30, fraction=1e-4, detected=True)
        .mrd(day=60, fraction=5e-5, detected=True)
    )
    t.mrd(day=90, fraction=8e-5, detected=True)
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical"), ("updated", "critical")]
    assert alerts[1].event_time == at_day(90)


def test_late_higher_level_that_moves_the_peak_is_an_update():
    # below LOQ on day 14, 5 × 10⁻⁵ on day 81 (the level rose: updated), then the day-65 marrow at
    # 10⁻³ arrives late: it rose above the previous detected level and is the episode's highest,
    # so the alert says something new even though the count of rises is unchanged
    t = patient().mrd(day=14, fraction=None, detected=True, method="flow")
    t.mrd(day=81, fraction=5e-5, detected=True, method="flow")
    t.mrd(day=65, fraction=1e-3, detected=True, method="flow")  # reported late
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical"), ("updated", "critical"), ("updated", "critical")]
    assert alerts[-1].event_time == at_day(65)
    assert "Highest level 10⁻³ (0.1 %) on day 65" in alerts[-1].summary
    assert len({a.alert_id for a in alerts}) == 1


def test_cancelled_rise_replaced_by_another_rise_is_an_update():
    # 10⁻⁴ on day 55, below LOQ on day 232 (reported late), 10⁻⁴ on day 311 (the level rose above
    # the previous detected one: updated), 10⁻⁵ on day 322 (lower than day 311: nothing); then the
    # day-311 result is cancelled: day 322 is now the result that rose above the day-232 level, new
    # evidence the alert has not shown, and the alert must stop citing a cancelled result
    t = patient().mrd(day=55, fraction=1e-4, detected=True, method="ngs")
    t.mrd(day=311, fraction=1e-4, detected=True, method="ngs", accession="M-311")
    t.mrd(day=232, fraction=None, detected=True, method="flow")
    t.mrd(day=322, fraction=1e-5, detected=True, method="pcr")
    before = only(run(t.events))
    assert mrd(before) == [("raised", "critical"), ("updated", "critical")]
    t.mrd(
        day=311, fraction=1e-4, detected=True, method="ngs", accession="M-311", status="cancelled"
    )
    alerts = only(run(t.events))
    assert mrd(alerts) == [("raised", "critical"), ("updated", "critical"), ("updated", "critical")]
    assert alerts[-1].event_time == at_day(311)
    assert "M-311" not in {e.accession for e in alerts[-1].evidence}
    assert len({a.alert_id for a in alerts}) == 1
