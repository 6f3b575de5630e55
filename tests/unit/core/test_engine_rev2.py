"""Section 0 of docs/clinical-spec.md, the items revision 2 added or sharpened: one test per item,
each failing on the first release's behaviour (its test name says which item).

Rule-specific rev. 2 items are tested in the rule's own file (``tests/unit/core/rules``).
"""

from datetime import timedelta

import pytest

from schemas.alert import RiskFactorNote
from schemas.records import Rejection, decode_record
from schemas.vocab import AlertAction, Analyte, Outcome, RejectReason, RuleName
from streams.core.engine import apply, apply_all, tick
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.core.state import PatientState
from streams.testing import DAY0, Timeline, actions, active, at_day, run

BCA = RuleName.BCA_LOSS
HYPO = RuleName.HYPOGAMMAGLOBULINEMIA


def in_aplasia(patient: str = "P1") -> Timeline:
    return Timeline(patient).infusion(day=0).cd19_pct(day=14, pct=0.1)


# --- intervals are differences of day numbers ------------------------------------------------


def test_rev2_intervals_weekly_samples_at_different_hours_are_a_week_apart():
    # onset day 40 at 16:00, confirmation day 47 at 07:00: 6 days 15 hours, but 7 calendar days
    t = in_aplasia().cd19_pct(day=40, pct=1.5, hour=16).cd19_pct(day=47, pct=1.5, hour=7)
    assert actions(run(t.events), BCA) == [("bca_loss", "raised", "critical")]


def test_rev2_intervals_six_calendar_days_are_not_seven_whatever_the_hours():
    # day 40 at 01:00 to day 46 at 23:00 is nearly 7 × 24 h, yet only 6 days apart
    t = in_aplasia().cd19_pct(day=40, pct=1.5, hour=1).cd19_pct(day=46, pct=1.5, hour=23)
    assert actions(run(t.events), BCA) == []


# --- numbers are numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("value", '"250"'), ("value", "true"), ("sensitivity", '"0.0001"')]
)
def test_rev2_numbers_on_the_wire_are_never_coerced(field: str, value: str):
    line = (
        '{"type": "lab_result", "patient_id": "P1", "analyte": "mrd", "value": 0.001, '
        '"unit": "1", "method": "ngs", "detected": true, "collected_at": "2026-02-01T08:00:00Z"}'
    ).replace(f'"{field}": 0.001', f'"{field}": {value}')
    if field == "sensitivity":
        line = line.replace('"detected": true', f'"detected": true, "sensitivity": {value}')
    decoded = decode_record(line)
    assert isinstance(decoded, Rejection)
    assert decoded.reason is RejectReason.INVALID_VALUE


def test_rev2_numbers_detected_as_text_is_invalid_value():
    line = (
        '{"type": "lab_result", "patient_id": "P1", "analyte": "mrd", "method": "ngs", '
        '"detected": "true", "collected_at": "2026-02-01T08:00:00Z"}'
    )
    decoded = decode_record(line)
    assert isinstance(decoded, Rejection) and decoded.reason is RejectReason.INVALID_VALUE


# --- censored values -------------------------------------------------------------------------


def test_rev2_censored_anc_below_100_counts_in_the_100_column_and_shows_its_comparator():
    t = Timeline("P1").infusion(day=0)
    for day in range(1, 8):
        t.lab(Analyte.ANC, day=day, value=100, comparator="<")
    (alert,) = [a for a in run(t.events) if a.rule is RuleName.PROLONGED_NEUTROPENIA]
    assert (alert.action, alert.severity.value) == (AlertAction.RAISED, "critical")
    assert "ANC < 100 /µL" in alert.summary
    assert all(e.comparator is not None and e.comparator.value == "<" for e in alert.evidence)


def test_rev2_censored_igg_below_140_is_below_400():
    t = Timeline("P1").infusion(day=0).lab(Analyte.IGG, day=30, value=140, comparator="<")
    (alert,) = run(t.events)
    assert alert.rule is HYPO and "IgG < 140 mg/dL" in alert.summary


def test_rev2_censored_ferritin_above_40000_meets_the_criterion():
    t = Timeline("P1").infusion(day=0).ferritin(day=-1, ng_ml=500)
    t.lab(Analyte.FERRITIN, day=10, value=40000, comparator=">").fibrinogen(day=10, mg_dl=100)
    (alert,) = [a for a in run(t.events) if a.rule is RuleName.IEC_HS]
    assert "ferritin > 40000 ng/mL" in alert.summary


# --- same specimen applied together ----------------------------------------------------------


def test_rev2_same_specimen_half_a_specimen_never_alerts():
    # CD19 2.4 % alone is an immediate loss; its absolute count of 6 /µL makes it aplastic
    t = in_aplasia().cd19_pct(day=60, pct=2.4).cd19_abs(day=60, per_ul=6)
    assert actions(run(t.events), BCA) == []


def test_rev2_same_specimen_results_of_one_batch_are_one_step():
    state = PatientState.new("P1")
    t = in_aplasia().cd19_pct(day=60, pct=2.4).cd19_abs(day=60, per_ul=6)
    results = apply_all(state, t.events, DEFAULT_POLICY)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 4
    assert all(r.alerts == [] for r in results)


# --- episode start moving later or earlier ---------------------------------------------------


def test_rev2_episode_start_moving_later_retracts_and_raises_under_the_new_id():
    t = Timeline("P1").infusion(day=0).igg(day=30, mg_dl=300)
    first = t.last_accession()
    t.igg(day=60, mg_dl=350)
    t.igg(day=30, mg_dl=None, status="cancelled", accession=first)
    alerts = [a for a in run(t.events) if a.rule is HYPO]
    assert [a.action for a in alerts] == [
        AlertAction.RAISED,
        AlertAction.RETRACTED,
        AlertAction.RAISED,
    ]
    assert alerts[0].alert_id == alerts[1].alert_id != alerts[2].alert_id
    assert alerts[2].episode_start == at_day(60)
    assert list(active(alerts)) == [alerts[2].alert_id]


def test_rev2_episode_start_moving_earlier_keeps_the_id_and_updates():
    t = Timeline("P1").infusion(day=0).igg(day=60, mg_dl=350).igg(day=30, mg_dl=300)
    alerts = [a for a in run(t.events) if a.rule is HYPO]
    assert [a.action for a in alerts] == [AlertAction.RAISED, AlertAction.UPDATED]
    assert alerts[0].alert_id == alerts[1].alert_id
    assert alerts[1].episode_start == at_day(30)


# --- re-opening on late results --------------------------------------------------------------


def test_rev2_reopening_when_a_late_result_shows_the_episode_never_ended():
    t = Timeline("P1").infusion(day=0)
    for day in range(1, 16):
        t.anc(day=day, per_ul=300)
    t.anc(day=17, per_ul=900).anc(day=20, per_ul=1000)  # stable recovery by day 20
    t.anc(day=18, per_ul=200)  # collected on day 18, reported late: the run was broken
    alerts = [a for a in run(t.events) if a.rule is RuleName.PROLONGED_NEUTROPENIA]
    assert [a.action for a in alerts] == [
        AlertAction.RAISED,
        AlertAction.RESOLVED,
        AlertAction.UPDATED,
    ]
    assert len({a.alert_id for a in alerts}) == 1
    assert len(active(alerts)) == 1


# --- order of events in one step -------------------------------------------------------------


def test_rev2_order_retractions_first_then_alerts_by_their_first_event_time():
    # one late correction retracts an IgG alert and reveals an MRD episode (raised + resolved)
    t = Timeline("P1").infusion(day=0, hct_eligible=False).igg(day=40, mg_dl=300)
    low = t.last_accession()
    t.mrd(day=70, fraction=None, detected=False, method="ngs", sensitivity=1e-6)
    t.events.append(
        t.events[-1].model_copy(
            update={"accession": "LATE", "detected": True, "collected_at": at_day(50)}
        )
    )
    t.igg(day=40, mg_dl=800, status="corrected", accession=low)
    alerts = run(t.events, apart=True)
    tail = [(a.rule.value, a.action.value) for a in alerts[-1:]]
    assert tail == [("hypogammaglobulinemia", "retracted")]
    late = [(a.rule.value, a.action.value) for a in alerts[1:3]]
    assert late == [("mrd_positive", "raised"), ("mrd_positive", "resolved")]


def test_rev2_order_within_one_step_is_retractions_then_lifecycle_then_rule_order():
    from streams.core.lifecycle import order

    t = Timeline("P1").infusion(day=0, risk_factors=["high_disease_burden"])
    t.mrd(day=28, fraction=0.001, detected=True).igg(day=28, mg_dl=300)
    alerts = run(t.events)
    shuffled = list(reversed(alerts))
    from streams.core.engine import RULE_ORDER

    reordered = order(shuffled, RULE_ORDER)
    firsts = {}
    for a in reordered:
        firsts.setdefault(a.alert_id, a)
    times = [(a.event_time, RULE_ORDER.index(a.rule)) for a in firsts.values()]
    assert times == sorted(times)


# --- bounded history never decides -----------------------------------------------------------


def five_year_patient() -> Timeline:
    t = Timeline("LONG").infusion(day=0, risk_factors=["low_cell_dose"])
    t.ferritin(day=-2, ng_ml=400)
    for day in range(1, 25):
        t.anc(day=day, per_ul=300 if day < 18 else 900)
    t.cd19_pct(day=14, pct=0.1)
    for month in range(1, 61):
        day = 30 * month
        t.cd19_pct(day=day, pct=0.1 if month < 20 or month > 24 else 1.5)
        t.igg(day=day + 2, mg_dl=300 if month % 7 < 3 else 600)
        t.anc(day=day + 3, per_ul=2000).platelets(day=day + 3, k_per_ul=200)
        if month % 6 == 0:
            t.mrd(day=day + 5, fraction=None, detected=month == 36, method="ngs")
    return t


@pytest.mark.parametrize("window", [730, 60])
def test_rev2_bounded_history_never_decides(window: int):
    events = five_year_patient().events
    unbounded = Policy(history_window_days=100_000, max_results_per_analyte=100_000)
    bounded = Policy(history_window_days=window, max_results_per_analyte=16)

    def key(alerts):
        return [(a.rule, a.action, a.severity, a.event_time, a.episode_start) for a in alerts]

    reference = run(events, unbounded, now=at_day(1900))
    pruned = run(events, bounded, now=at_day(1900))
    assert len(reference) >= 10
    assert key(pruned) == key(reference)


def test_rev2_bounded_history_keeps_an_open_loss_open_after_its_specimens_are_pruned():
    t = in_aplasia().cd19_pct(day=40, pct=1.5).cd19_pct(day=47, pct=1.5)
    for day in range(50, 400, 3):
        t.cd19_pct(day=day, pct=1.5)
    policy = Policy(history_window_days=60, max_results_per_analyte=16)
    alerts = [a for a in run(t.events, policy) if a.rule is BCA]
    assert [a.action for a in alerts] == [AlertAction.RAISED]
    assert len(active(alerts)) == 1


# --- course events ---------------------------------------------------------------------------


def test_rev2_course_hct_performed_resolves_b_cell_alerts_and_hct_advice():
    t = in_aplasia().cd19_pct(day=40, pct=1.5).cd19_pct(day=47, pct=1.5)
    t.event("hct_performed", day=70)
    t.cd19_pct(day=100, pct=5).cd19_pct(day=110, pct=6)  # donor B cells: expected
    t.mrd(day=120, fraction=1e-4, detected=True)  # MRD is still monitored
    alerts = run(t.events)
    assert actions(alerts) == [
        ("bca_loss", "raised", "critical"),
        ("hct_consolidation", "raised", "warning"),
        ("bca_loss", "resolved", "critical"),
        ("hct_consolidation", "resolved", "warning"),
        ("mrd_positive", "raised", "critical"),
    ]
    assert "HCT performed on day 70" in alerts[2].summary
    assert "consolidative HCT performed on day 70" in alerts[3].summary


def test_rev2_course_relapse_with_detail_ends_the_response_rules_and_not_igg():
    t = in_aplasia().cd19_pct(day=40, pct=1.5).cd19_pct(day=47, pct=1.5).igg(day=50, mg_dl=300)
    t.event("relapse", day=80, detail="cd19_negative").event("reinfusion", day=90)
    t.cd19_pct(day=120, pct=0.1).cd19_pct(day=150, pct=4).mrd(day=150, fraction=0.01, detected=True)
    t.igg(day=160, mg_dl=700)
    alerts = run(t.events)
    assert actions(alerts, BCA) == [
        ("bca_loss", "raised", "critical"),
        ("bca_loss", "resolved", "critical"),
    ]
    assert "relapse recorded on day 80 (cd19_negative)" in alerts[-4].summary or any(
        "relapse recorded on day 80 (cd19_negative)" in a.summary for a in alerts
    )
    assert actions(alerts, RuleName.MRD_POSITIVE) == []
    assert actions(alerts, HYPO) == [
        ("hypogammaglobulinemia", "raised", "warning"),
        ("hypogammaglobulinemia", "resolved", "warning"),
    ]


def test_rev2_course_end_of_follow_up_resolves_everything_and_later_results_are_not_monitored():
    t = Timeline("P1").infusion(day=0).igg(day=30, mg_dl=300)
    t.event("end_of_follow_up", day=40, detail="transfer")
    t.igg(day=50, mg_dl=200)
    state = PatientState.new("P1")
    results = apply_all(state, t.events, DEFAULT_POLICY)
    assert results[-1].outcome is Outcome.NOT_MONITORED
    alerts = [a for r in results for a in r.alerts]
    assert actions(alerts) == [
        ("hypogammaglobulinemia", "raised", "warning"),
        ("hypogammaglobulinemia", "resolved", "warning"),
    ]
    assert "follow-up ended on day 40 (transfer)" in alerts[-1].summary
    assert tick(state, DAY0 + timedelta(days=400), DEFAULT_POLICY)[1] == []


def test_rev2_course_unknown_kind_is_rejected_with_its_name():
    line = '{"type": "clinical_event", "patient_id": "P1", "kind": "transplant", "at": "2026-02-01T08:00:00Z"}'
    decoded = decode_record(line)
    assert isinstance(decoded, Rejection)
    assert decoded.reason is RejectReason.UNKNOWN_VOCABULARY
    assert "transplant" in decoded.details[0].message


# --- risk context ----------------------------------------------------------------------------


def test_rev2_risk_context_is_listed_with_b_cell_mrd_and_hct_alerts():
    t = Timeline("P1").infusion(day=0, risk_factors=["low_cell_dose", "suboptimal_fludarabine"])
    t.cd19_pct(day=14, pct=0.1).cd19_pct(day=40, pct=2.5).mrd(day=60, fraction=1e-3, detected=True)
    t.igg(day=61, mg_dl=300)
    alerts = run(t.events)
    for alert in alerts:
        notes = [c for c in alert.context if isinstance(c, RiskFactorNote)]
        if alert.rule is HYPO:
            assert notes == []
            continue
        assert {n.risk_factor.value for n in notes} == {"low_cell_dose", "suboptimal_fludarabine"}
        assert all(n.table_1 for n in notes)
        assert "Risk factors recorded at infusion: low cell dose, suboptimal fludarabine" in (
            alert.summary
        )


# --- alert ids -------------------------------------------------------------------------------


def test_rev2_alert_id_is_kept_when_the_policy_changes_after_raising():
    t = Timeline("P1").infusion(day=0).igg(day=30, mg_dl=300)
    state = PatientState.new("P1")
    (raised,) = (
        apply(state, t.events[0], DEFAULT_POLICY).alerts
        + apply(state, t.events[1], DEFAULT_POLICY).alerts
    )
    stricter = Policy(igg_threshold_mg_dl=500, version="site-2")
    later = Timeline("P1").igg(day=60, mg_dl=700, accession="P1-LATER").events[0]
    (resolved,) = apply(state, later, stricter).alerts
    assert resolved.action is AlertAction.RESOLVED
    assert resolved.alert_id == raised.alert_id
    assert resolved.policy_version == stricter.version_tag != raised.policy_version
