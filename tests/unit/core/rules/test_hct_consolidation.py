"""Consolidative HCT advice (docs/clinical-spec.md §6; streams/core/rules/hct_consolidation.py).

One alert per patient, when ``hct_eligible`` (absent counts as true: "if eligible for HCT") and
no prior HCT. Info ("may be considered") with a high-risk factor; warning ("reasonable evidence
to recommend", ``updated`` from info) with a CD28 product, a BCA loss with onset within 6 months
or MRD positivity; back to info, or retracted, when those bases are retracted. Prior HCT + early
BCA loss → info "requires special consideration"; prior HCT + MRD → nothing.
"""

import pytest

from schemas.vocab import Analyte, RuleName
from streams.testing import DAY0, Timeline, actions, active, at_day, run

HCT = RuleName.HCT_CONSOLIDATION
MAY_CONSIDER = [
    "donor_available_wishes_hct",
    "high_disease_burden",
    "blinatumomab_failure",
    "refractory_disease",
    "kmt2a_rearranged",
    "tp53_mutated",
]
CONTEXT_ONLY = [
    "cardiac_pulmonary_comorbidity",
    "low_cell_dose",
    "early_post_hct_relapse",
    "suboptimal_fludarabine",
]


def hct(alerts):
    return [(action, severity) for _, action, severity in actions(alerts, HCT)]


def only(alerts):
    return [a for a in alerts if a.rule is HCT]


def early_bca_loss(t: Timeline) -> Timeline:
    """Aplasia on day 14, B cells back on days 60 and 67: loss with onset within 6 months."""
    return t.cd19_pct(day=14, pct=0.1).cd19_pct(day=60, pct=1.5).cd19_pct(day=67, pct=1.5)


def late_bca_loss(t: Timeline) -> Timeline:
    return t.cd19_pct(day=14, pct=0.1).cd19_pct(day=200, pct=1.5).cd19_pct(day=207, pct=1.5)


@pytest.mark.parametrize("risk_factor", MAY_CONSIDER)
def test_high_risk_factor_at_enrollment_means_hct_may_be_considered(risk_factor, documented):
    t = Timeline("P1").infusion(day=0, risk_factors=[risk_factor])
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "info")]
    alert = alerts[0]
    assert alert.event_time == DAY0
    assert "may be considered" in alert.summary
    assert "HCT consultation" in alert.recommendation
    documented(alert)


@pytest.mark.parametrize("risk_factor", CONTEXT_ONLY)
def test_context_only_risk_factor_raises_nothing(risk_factor):
    t = Timeline("P1").infusion(day=0, risk_factors=[risk_factor])
    assert hct(run(t.events)) == []


def test_no_risk_factor_and_no_basis_raises_nothing():
    assert hct(run(Timeline("P1").infusion(day=0).events)) == []


def test_cd28_product_is_reasonable_evidence_to_recommend_hct_4_to_8_weeks_after_infusion():
    alerts = only(run(Timeline("P1").infusion(day=0, costim="CD28").events))
    assert hct(alerts) == [("raised", "warning")]
    assert "Reasonable evidence to recommend consolidative HCT" in alerts[0].summary
    assert "4-8 weeks" in alerts[0].summary


def test_bca_loss_within_6_months_is_reasonable_evidence_to_recommend_hct(documented):
    alerts = only(run(early_bca_loss(Timeline("P1").infusion(day=0)).events))
    assert hct(alerts) == [("raised", "warning")]
    alert = alerts[0]
    assert alert.event_time == at_day(67)
    assert "loss of B-cell aplasia within 6 months" in alert.summary
    documented(alert, analytes={Analyte.CD19_PCT}, collected={at_day(60), at_day(67)})


def test_bca_loss_after_6_months_is_not_a_basis_for_hct():
    assert hct(run(late_bca_loss(Timeline("P1").infusion(day=0)).events)) == []


def test_mrd_positivity_is_reasonable_evidence_to_recommend_hct(documented):
    t = Timeline("P1").infusion(day=0).mrd(day=28, fraction=0.001, detected=True)
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "warning")]
    assert "MRD positivity" in alerts[0].summary
    assert "Refer for consolidative HCT evaluation" in alerts[0].recommendation
    documented(alerts[0], analytes={Analyte.MRD}, collected={at_day(28)})


def test_resolved_mrd_still_supports_the_recommendation():
    t = Timeline("P1").infusion(day=0).mrd(day=28, fraction=0.001, detected=True)
    t.mrd(day=60, fraction=None, detected=False)
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "warning")]
    assert len(active(alerts)) == 1


def test_info_is_updated_to_warning_when_mrd_becomes_positive():
    t = Timeline("P1").infusion(day=0, risk_factors=["kmt2a_rearranged"])
    t.mrd(day=28, fraction=0.001, detected=True)
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "info"), ("updated", "warning")]
    assert alerts[1].alert_id == alerts[0].alert_id
    assert alerts[1].event_time == at_day(28)
    assert "KMT2A" in alerts[1].summary  # the risk factor is still listed


def test_falls_back_to_info_when_the_mrd_that_made_it_a_warning_is_cancelled():
    t = Timeline("P1").infusion(day=0, risk_factors=["high_disease_burden"])
    t.mrd(day=28, fraction=0.001, detected=True)
    t.lab(Analyte.MRD, day=28, value=None, status="cancelled", accession=t.last_accession())
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "info"), ("updated", "warning"), ("updated", "info")]
    assert len({a.alert_id for a in alerts}) == 1
    assert "may be considered" in alerts[-1].summary
    assert len(active(alerts)) == 1


def test_fall_back_to_info_is_timed_at_the_cancelled_result():
    t = Timeline("P1").infusion(day=0, risk_factors=["high_disease_burden"])
    t.mrd(day=28, fraction=0.001, detected=True)
    t.lab(Analyte.MRD, day=28, value=None, status="cancelled", accession=t.last_accession())
    fallback = only(run(t.events))[-1]
    assert fallback.event_time == at_day(28)
    assert fallback.day == 28


def test_retracted_when_nothing_remains_after_the_mrd_is_cancelled():
    t = Timeline("P1").infusion(day=0).mrd(day=28, fraction=0.001, detected=True)
    t.lab(Analyte.MRD, day=28, value=None, status="cancelled", accession=t.last_accession())
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "warning"), ("retracted", "warning")]
    assert alerts[1].alert_id == alerts[0].alert_id
    assert active(alerts) == {}


def test_retracted_when_the_bca_loss_is_corrected_away():
    t = early_bca_loss(Timeline("P1").infusion(day=0))
    t.cd19_pct(day=67, pct=0.3, status="corrected", accession=t.last_accession())
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "warning"), ("retracted", "warning")]


def test_eligibility_not_stated_says_if_eligible_for_hct():
    t = Timeline("P1").infusion(day=0, hct_eligible=None, risk_factors=["tp53_mutated"])
    t.mrd(day=28, fraction=0.001, detected=True)
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "info"), ("updated", "warning")]
    for alert in alerts:
        assert "if eligible for HCT" in alert.summary
        assert "if eligible for HCT" in alert.recommendation


def test_eligible_patient_is_not_told_if_eligible():
    t = Timeline("P1").infusion(day=0, hct_eligible=True).mrd(28, 0.001, detected=True)
    (alert,) = only(run(t.events))
    assert "if eligible" not in alert.summary + alert.recommendation


def test_patient_not_eligible_for_hct_gets_no_hct_advice():
    t = Timeline("P1").infusion(
        day=0, hct_eligible=False, costim="CD28", risk_factors=["high_disease_burden"]
    )
    early_bca_loss(t).mrd(day=28, fraction=0.001, detected=True)
    assert hct(run(t.events)) == []


def test_prior_hct_with_early_bca_loss_requires_special_consideration(documented):
    t = early_bca_loss(Timeline("P1").infusion(day=0, prior_hct=True))
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "info")]
    alert = alerts[0]
    assert "requires special consideration" in alert.summary
    for factor in (
        "time since the first HCT",
        "conditioning and donor",
        "CD19-negative clone",
        "donor availability",
        "comorbidities",
        "previous toxicities",
    ):
        assert factor in alert.summary
    documented(alert, analytes={Analyte.CD19_PCT})


def test_prior_hct_with_mrd_positivity_gets_no_hct_advice():
    t = Timeline("P1").infusion(day=0, prior_hct=True).mrd(28, 0.001, detected=True)
    assert hct(run(t.events)) == []


def test_prior_hct_with_late_bca_loss_gets_no_hct_advice():
    assert hct(run(late_bca_loss(Timeline("P1").infusion(day=0, prior_hct=True)).events)) == []


def test_prior_hct_with_cd28_product_or_risk_factors_gets_no_hct_advice():
    t = Timeline("P1").infusion(
        day=0, prior_hct=True, costim="CD28", risk_factors=["high_disease_burden"]
    )
    assert hct(run(t.events)) == []


def test_one_alert_per_patient_across_several_bases():
    t = Timeline("P1").infusion(day=0, risk_factors=["refractory_disease"])
    t.mrd(day=28, fraction=0.001, detected=True).mrd(day=40, fraction=None, detected=False)
    early_bca_loss(t).mrd(day=90, fraction=0.002, detected=True)
    alerts = only(run(t.events))
    assert [a for a in hct(alerts) if a[0] == "raised"] == [("raised", "info")]
    assert len({a.alert_id for a in alerts}) == 1
    assert len(active(alerts)) == 1


def test_not_hct_eligible_after_prior_hct_gets_no_hct_advice_even_after_early_bca_loss():
    t = (
        Timeline("P1")
        .infusion(day=0, prior_hct=True, hct_eligible=False)
        .cd19_pct(day=28, pct=0.1)
        .cd19_pct(day=90, pct=5.0)
    )
    alerts = run(t.events)
    assert [a.rule for a in alerts] == [RuleName.BCA_LOSS]


def test_a_resolved_loss_whose_onset_a_cancellation_moves_within_6_months_reveals_the_advice():
    # aplasia on day 14; CD19 0.3 % and 10 /µL on day 158 (aplastic by the %), back at 2 % on day
    # 190 (at once: ≥ twice the threshold; onset day 190, a warning, no HCT basis), aplastic again
    # on day 197 (resolved); HCT performed on day 210. Then the day-158 CD19 % is cancelled: that
    # specimen qualifies by its count alone, the loss's onset is day 158 (within 6 months) and
    # the advice to consider HCT held from day 190 to the HCT. The loss alert, already resolved,
    # says nothing new; the advice it now supports is raised and resolved.
    t = Timeline("P1").infusion(day=0).cd19_pct(day=14, pct=0.1)
    t.cd19_pct(day=158, pct=0.3, accession="CD19-158").cd19_abs(day=158, per_ul=10)
    t.cd19_pct(day=190, pct=2.0).cd19_pct(day=197, pct=0.3).event("hct_performed", day=210)
    before = run(t.events)
    assert hct(only(before)) == []
    t.lab(Analyte.CD19_PCT, day=158, value=None, status="cancelled", accession="CD19-158")
    alerts = only(run(t.events))
    assert hct(alerts) == [("raised", "warning"), ("resolved", "warning")]
    assert [a.event_time for a in alerts] == [at_day(190), at_day(210, 9)]
