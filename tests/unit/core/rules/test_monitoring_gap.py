"""Monitoring gap (clinical-rules.md section 7; streams/rules/monitoring_gap.py).

Only ``tick(now)`` adds wall-clock time. Info when a patient in follow-up has no CD19 result for
more than 35 days (first year; 90 after) or no IgG for more than 60 days (first year; 90 after),
counted from the later of day 0 and the last such result; and when an open neutropenia episode
has no ANC for more than 7 days. Separate episodes; each resolves when the missing result arrives.
"""

from datetime import datetime, timedelta

from schemas.alert import AlertEvent
from schemas.vocab import Analyte, RuleName
from streams.core.engine import PatientEvent, step, tick
from streams.core.policy import DEFAULT_POLICY
from streams.core.state import PatientState
from streams.testing import DAY0, Timeline, active, at_day, run

GAP = RuleName.MONITORING_GAP


def gaps(alerts, kind: str | None = None) -> list[AlertEvent]:
    """Gap alerts, optionally only of one kind: "CD19", "IgG" or "ANC"."""
    return [
        a for a in alerts if a.rule is GAP and (kind is None or a.summary.startswith(f"No {kind}"))
    ]


def gap_actions(alerts, kind: str | None = None):
    return [(a.action.value, a.severity.value) for a in gaps(alerts, kind)]


class Patient:
    """One patient's state, fed record by record and ticked like the worker does."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.state = PatientState.new(timeline.patient_id)
        self.sent = 0

    def send_new(self) -> list[AlertEvent]:
        """Step every record added to the timeline since the last call."""
        alerts: list[AlertEvent] = []
        new: list[PatientEvent] = self.timeline.events[self.sent :]
        for event in new:
            alerts += step(self.state, event, DEFAULT_POLICY)[1]
        self.sent = len(self.timeline.events)
        return alerts

    def tick(self, now: datetime) -> list[AlertEvent]:
        return tick(self.state, now, DEFAULT_POLICY)[1]


def followed(cd19_day: int = 10, igg_day: int = 10) -> Timeline:
    """Patient in aplasia, CD19 and IgG last measured on the given days."""
    return (
        Timeline("P1").infusion(day=0).cd19_pct(day=cd19_day, pct=0.1).igg(day=igg_day, mg_dl=800)
    )


# --- CD19: more than 35 days in the first year, 90 after -----------------------------------


def test_no_cd19_for_exactly_35_days_is_not_a_gap():
    assert gaps(run(followed().events, now=at_day(45))) == []


def test_no_cd19_for_36_days_raises_an_info_gap(documented):
    alerts = gaps(run(followed().events, now=at_day(46)), "CD19")
    assert gap_actions(alerts) == [("raised", "info")]
    alert = alerts[0]
    # rev. 2 intervals: day 45 is 35 days after day 10; the gap exceeds 35 days from day 46 on
    assert alert.event_time == at_day(46, hour=0)
    assert alert.decided_at == at_day(46)
    assert "more than 35 days since day 10" in alert.summary
    assert "CD19" in alert.recommendation
    documented(alert, analytes={Analyte.CD19_PCT}, collected={at_day(10)}, reference="section 7")


def test_absolute_cd19_count_counts_as_a_cd19_result():
    t = followed().cd19_abs(day=30, per_ul=2)
    assert gaps(run(t.events, now=at_day(65)), "CD19") == []
    assert gap_actions(run(t.events, now=at_day(66)), "CD19") == [("raised", "info")]


def test_after_the_first_year_the_cd19_gap_is_90_days():
    t = followed(cd19_day=400, igg_day=400)
    assert gaps(run(t.events, now=at_day(440))) == []  # 40 days: no gap after year one
    assert gaps(run(t.events, now=at_day(490))) == []  # exactly 90 days
    alerts = gaps(run(t.events, now=at_day(491)), "CD19")
    assert gap_actions(alerts) == [("raised", "info")]
    assert "more than 90 days since day 400" in alerts[0].summary


# --- IgG: more than 60 days in the first year, 90 after -------------------------------------


def test_no_igg_for_exactly_60_days_is_not_a_gap_and_61_days_is():
    t = followed(cd19_day=60, igg_day=10)
    assert gaps(run(t.events, now=at_day(70))) == []
    alerts = gaps(run(t.events, now=at_day(71)))
    assert gap_actions(alerts, "IgG") == [("raised", "info")]
    assert gaps(alerts, "CD19") == []
    assert alerts[0].evidence[0].analyte is Analyte.IGG


def test_after_the_first_year_the_igg_gap_is_90_days():
    t = followed(cd19_day=420, igg_day=400)
    assert gaps(run(t.events, now=at_day(490)), "IgG") == []
    assert gap_actions(run(t.events, now=at_day(491)), "IgG") == [("raised", "info")]


# --- anchor: the later of day 0 and the last result -----------------------------------------


def test_gap_is_counted_from_day_0_when_there_is_no_result_since():
    # baseline CD19 and IgG before the infusion do not restart the count after day 0; rev. 2:
    # "more than 35 days" is a difference of day numbers, so the whole of day 35 is no gap
    t = Timeline("P1").infusion(day=0).cd19_pct(day=-5, pct=20).igg(day=-5, mg_dl=700)
    assert gaps(run(t.events, now=at_day(35, hour=23))) == []
    alerts = gaps(run(t.events, now=at_day(36, hour=0)))
    assert gap_actions(alerts) == [("raised", "info")]
    assert "since day 0 (infusion)" in alerts[0].summary
    assert alerts[0].event_time == at_day(36, hour=0)


def test_igg_gap_from_day_0_needs_more_than_60_days():
    t = Timeline("P1").infusion(day=0).cd19_pct(day=55, pct=0.1)
    assert gaps(run(t.events, now=DAY0 + timedelta(days=60)), "IgG") == []
    alerts = gaps(run(t.events, now=DAY0 + timedelta(days=61)), "IgG")
    assert gap_actions(alerts) == [("raised", "info")]


# --- ANC: only during an open neutropenia episode ---------------------------------------------


def test_open_neutropenia_without_anc_for_more_than_7_days_is_a_gap(documented):
    t = followed().anc(day=5, per_ul=300)
    assert gaps(run(t.events, now=at_day(12)), "ANC") == []  # exactly 7 days
    alerts = gaps(run(t.events, now=at_day(13)), "ANC")
    assert gap_actions(alerts) == [("raised", "info")]
    assert "more than 7 days since day 5" in alerts[0].summary
    documented(alerts[0], analytes={Analyte.ANC}, collected={at_day(5)}, reference="section 7")


def test_no_anc_gap_without_neutropenia():
    t = followed().anc(day=5, per_ul=2500)
    assert gaps(run(t.events, now=at_day(30)), "ANC") == []


def test_no_anc_gap_after_stable_recovery():
    t = followed().anc(day=3, per_ul=300).anc(day=5, per_ul=800).anc(day=7, per_ul=1200)
    assert gaps(run(t.events, now=at_day(30)), "ANC") == []


# --- resolution, separate episodes -----------------------------------------------------------


def test_cd19_gap_resolves_when_a_cd19_result_arrives_and_the_igg_gap_stays_open():
    patient = Patient(followed())
    patient.send_new()
    opened = patient.tick(at_day(75))
    assert gap_actions(opened, "CD19") == [("raised", "info")]
    assert gap_actions(opened, "IgG") == [("raised", "info")]
    assert opened[0].alert_id != opened[1].alert_id

    patient.timeline.cd19_pct(day=76, pct=0.1)
    closed = patient.send_new()
    assert gap_actions(closed) == [("resolved", "info")]
    (resolved,) = gaps(closed, "CD19")
    assert resolved.alert_id == gaps(opened, "CD19")[0].alert_id
    assert resolved.event_time == at_day(76)
    assert "Resolved" in resolved.summary
    still_open = active(opened + closed)
    assert [a.summary.split(" result")[0] for a in still_open.values()] == ["No IgG"]


def test_anc_gap_resolves_when_an_anc_arrives():
    patient = Patient(followed().anc(day=5, per_ul=300))
    patient.send_new()
    assert gap_actions(patient.tick(at_day(14)), "ANC") == [("raised", "info")]
    patient.timeline.anc(day=15, per_ul=250)
    assert gap_actions(patient.send_new(), "ANC") == [("resolved", "info")]


def test_a_later_gap_of_the_same_kind_is_a_new_episode_with_a_new_alert_id():
    patient = Patient(followed(igg_day=70))
    patient.send_new()
    first = gaps(patient.tick(at_day(50)), "CD19")
    patient.timeline.cd19_pct(day=52, pct=0.1)
    patient.send_new()
    second = gaps(patient.tick(at_day(90)), "CD19")
    assert gap_actions(second) == [("raised", "info")]
    assert second[0].alert_id != first[0].alert_id
    assert "since day 52" in second[0].summary


def test_ticking_again_does_not_raise_the_same_gap_twice():
    patient = Patient(followed(igg_day=40))
    patient.send_new()
    assert gap_actions(patient.tick(at_day(50))) == [("raised", "info")]
    assert patient.tick(at_day(51)) == []
    assert patient.tick(at_day(60)) == []


def test_late_cd19_collected_inside_the_gap_resolves_it():
    # rev. 2, section 7: a gap resolves only when the missing analyte arrives -- late or not,
    # it is resolved (the missing result arrived), never retracted
    patient = Patient(followed(igg_day=40))
    patient.send_new()
    (raised,) = gaps(patient.tick(at_day(50)), "CD19")
    patient.timeline.cd19_pct(day=30, pct=0.1)  # collected on day 30, reported late
    (resolved,) = gaps(patient.send_new())
    assert (resolved.action.value, resolved.severity.value) == ("resolved", "info")
    assert resolved.alert_id == raised.alert_id
    assert resolved.event_time == at_day(30)


def test_late_results_of_other_analytes_between_ticks_never_touch_a_gap():
    # rev. 2: the first release retracted a CD19 gap when a late IgG arrived, and the next tick
    # raised it again. One gap is one episode: one raised, no retraction, however many ticks.
    patient = Patient(followed(igg_day=40))
    patient.send_new()
    alerts = patient.tick(at_day(50))
    for day in range(20, 60, 5):
        patient.timeline.igg(day=day - 10, mg_dl=700)  # collected before the gap began: late
        patient.timeline.anc(day=day - 12, per_ul=2500)
        alerts += patient.send_new()
        alerts += patient.tick(at_day(day + 40))
    cd19 = gaps(alerts, "CD19")
    assert gap_actions(cd19) == [("raised", "info")]


# --- the clock: only tick moves it ---------------------------------------------------------


def test_no_tick_means_no_gap_alerts():
    t = followed()
    for day in (60, 120, 180):
        t.anc(day=day, per_ul=2500)
    assert gaps(run(t.events)) == []


def test_a_result_of_another_analyte_does_not_move_the_clock():
    # after a tick on day 20, IgG results up to day 100 do not make the CD19 of day 10 overdue
    patient = Patient(followed())
    patient.send_new()
    assert patient.tick(at_day(20)) == []
    patient.timeline.igg(day=70, mg_dl=750).igg(day=100, mg_dl=760)
    assert gaps(patient.send_new()) == []
    assert gap_actions(patient.tick(at_day(101)), "CD19") == [("raised", "info")]


def test_unenrolled_patient_has_no_gaps():
    state = PatientState.new("P9")
    assert tick(state, at_day(400), DEFAULT_POLICY)[1] == []
