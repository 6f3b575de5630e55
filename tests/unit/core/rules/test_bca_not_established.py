"""B-cell aplasia never established (docs/clinical-spec.md section 1; rev. 2 rule
``bca_not_established``; streams/core/rules/bca_not_established.py).

If the first CD19 specimen collected on or after day 21 is qualifying and no aplastic specimen has
been seen after day 0 → critical. Resolved by the first aplastic specimen (BCA established late).
A patient whose BCA was established never gets this alert.
"""

from schemas.vocab import RuleName
from streams.core.policy import Policy
from streams.testing import Timeline, actions, active, at_day, run

RULE = RuleName.BCA_NOT_ESTABLISHED


def not_established(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, RULE)]


def test_rev2_bca_not_established_first_specimen_on_day_21_qualifying_is_critical(documented):
    t = Timeline("P1").infusion(day=0).cd19_pct(day=21, pct=4.0)
    (alert,) = [a for a in run(t.events) if a.rule is RULE]
    assert (alert.action.value, alert.severity.value) == ("raised", "critical")
    assert alert.event_time == at_day(21)
    assert "primary failure" in alert.recommendation
    assert "MRD" in alert.recommendation
    documented(alert, collected={at_day(21)})


def test_qualifying_specimens_before_day_21_decide_nothing():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=7, pct=3.0).cd19_pct(day=20, pct=3.0)
    assert not_established(run(t.events)) == []


def test_the_first_specimen_on_or_after_day_21_decides_later_ones_do_not():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=28, pct=0.2).cd19_pct(day=35, pct=3.0)
    assert not_established(run(t.events)) == []


def test_aplasia_seen_before_day_21_means_bca_was_established():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=10, pct=0.1).cd19_pct(day=21, pct=3.0)
    assert not_established(run(t.events)) == []


def test_aplastic_specimen_on_day_0_does_not_establish_bca():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=0, pct=0.1).cd19_pct(day=25, pct=3.0)
    assert not_established(run(t.events)) == [("raised", "critical")]


def test_resolved_when_bca_is_established_late():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=25, pct=3.0).cd19_pct(day=60, pct=0.3)
    alerts = [a for a in run(t.events) if a.rule is RULE]
    assert not_established(alerts) == [("raised", "critical"), ("resolved", "critical")]
    assert alerts[1].event_time == at_day(60)
    assert "established late" in alerts[1].summary
    assert active(alerts) == {}


def test_a_late_aplastic_specimen_before_day_21_retracts_it():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=25, pct=3.0).cd19_pct(day=14, pct=0.1)
    assert not_established(run(t.events)) == [("raised", "critical"), ("retracted", "critical")]


def test_check_day_is_a_policy_setting():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=25, pct=3.0)
    assert not_established(run(t.events, Policy(bca_establish_check_day=28))) == []
    assert not_established(run(t.events, Policy(bca_establish_check_day=14))) == [
        ("raised", "critical")
    ]


def test_absolute_count_below_threshold_is_aplasia_established():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=21, pct=3.0).cd19_abs(day=21, per_ul=4)
    assert not_established(run(t.events)) == []


def test_day_numbers_decide_day_21_not_hours():
    # day 20 at 23:00 is not yet day 21
    t = Timeline("P1").infusion(day=0).cd19_pct(day=20, pct=3.0, hour=23)
    assert not_established(run(t.events)) == []


def test_hct_performed_resolves_it_and_stops_the_rule():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=21, pct=3.0).event("hct_performed", day=40)
    alerts = [a for a in run(t.events) if a.rule is RULE]
    assert not_established(alerts) == [("raised", "critical"), ("resolved", "critical")]
    assert "HCT performed on day 40" in alerts[1].summary


def test_relapse_before_day_21_means_no_alert():
    t = Timeline("P1").infusion(day=0).event("relapse", day=15, detail="cd19_negative")
    t.cd19_pct(day=25, pct=3.0)
    assert not_established(run(t.events)) == []


def test_risk_factors_are_shown_as_context():
    t = Timeline("P1").infusion(day=0, risk_factors=["low_cell_dose"]).cd19_pct(day=21, pct=3.0)
    (alert,) = [a for a in run(t.events) if a.rule is RULE]
    assert "low cell dose" in alert.summary
    assert [c.risk_factor.value for c in alert.context if c.kind == "risk_factor"] == [
        "low_cell_dose"
    ]


def test_bca_loss_never_fires_without_establishment_and_this_rule_does():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=21, pct=3.0).cd19_pct(day=30, pct=4.0)
    alerts = run(t.events)
    assert actions(alerts, RuleName.BCA_LOSS) == []
    assert not_established(alerts) == [("raised", "critical")]
