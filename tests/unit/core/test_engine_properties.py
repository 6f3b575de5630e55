"""Property tests of the engine's invariants (DESIGN.md "Nothing lost, nothing doubled").

- the same input, replayed or with duplicated records, gives byte-identical alert output;
- any arrival order of the same records gives the same final set of active alerts -- the same
  rules, severities and episode starts. (Alert ids can differ: an episode keeps the id it was
  first announced under when a late result moves its start earlier, rather than being retracted
  and raised a second time, see ``streams.core.lifecycle``.);
- a condition that stays true never raises twice;
- a value corrected or cancelled away always ends in a retraction;
- the incremental path (an appended specimen fed to the rules' tails) gives byte-identical output
  to full evaluation;
- pruning never decides: a 5-year patient gives the same alert events under any history bounds.

Censored values and course events are drawn too.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.alert import AlertEvent
from schemas.lab_result import LabResult
from schemas.vocab import AlertAction, Analyte, ResultStatus, RuleName
from streams.core.engine import PatientEvent, apply_all
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.core.state import PatientState
from streams.testing import Timeline, active, at_day, run
from tests.strategies import censored_specs, course_specs, result_specs, timeline


def dumps(events: list[PatientEvent]) -> list[str]:
    return [a.model_dump_json() for a in run(events)]


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(censored_specs, course_specs)
def test_replaying_the_same_input_is_byte_identical(specs: list, courses: list) -> None:
    events = timeline(specs, courses=courses).events
    assert dumps(events) == dumps(list(events))


@PROPERTY
@given(censored_specs, course_specs, st.data())
def test_duplicated_records_change_nothing(specs: list, courses: list, data: st.DataObject) -> None:
    events = timeline(specs, courses=courses).events
    doubled: list[PatientEvent] = []
    for event in events:
        doubled.append(event)
        if data.draw(st.booleans()):
            doubled.append(event.model_copy())
    assert dumps(doubled) == dumps(events)


@PROPERTY
@given(censored_specs, course_specs, st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_active_alerts(specs: list, courses: list, random) -> None:
    events = timeline(specs, courses=courses).events
    infusion, records = events[0], events[1:]
    shuffled = list(records)
    random.shuffle(shuffled)
    in_order = active(run(events, apart=True)).values()
    any_order = active(run([infusion, *shuffled], apart=True)).values()
    assert sorted((a.rule, a.severity, a.episode_start) for a in in_order) == sorted(
        (a.rule, a.severity, a.episode_start) for a in any_order
    )


@PROPERTY
@given(censored_specs)
def test_an_alert_is_raised_once_while_its_condition_holds(specs: list) -> None:
    in_order = sorted(specs, key=lambda s: (s[0][1], s[0][2]))
    raised: dict[str, int] = {}
    for alert in run(timeline(in_order).events):
        assert alert.action is not AlertAction.RETRACTED, "in-order final results never retract"
        if alert.action is AlertAction.RAISED:
            raised[alert.alert_id] = raised.get(alert.alert_id, 0) + 1
    assert all(n == 1 for n in raised.values())


@PROPERTY
@given(st.lists(st.integers(min_value=0, max_value=399), min_size=1, max_size=12))
def test_igg_that_stays_low_raises_once(values: list[int]) -> None:
    t = Timeline("LOW").infusion()
    for month, value in enumerate(values):
        t.igg(30 * month, value)
    assert [a.action for a in run(t.events)] == [AlertAction.RAISED]


@PROPERTY
@given(result_specs, st.booleans())
def test_values_corrected_or_cancelled_away_end_in_retraction(specs: list, cancel: bool) -> None:
    events = timeline(specs).events
    removals: list[PatientEvent] = []
    for event in events[1:]:
        assert isinstance(event, LabResult)
        if cancel:
            removals.append(event.model_copy(update={"status": ResultStatus.CANCELLED}))
        else:
            removals.append(
                event.model_copy(update={"status": ResultStatus.CORRECTED, "value": _benign(event)})
            )
    last: dict[str, AlertAction] = {}
    for alert in run([*events, *removals]):
        if alert.rule is not RuleName.HCT_CONSOLIDATION:
            last[alert.alert_id] = alert.action
    assert all(action is AlertAction.RETRACTED for action in last.values())


def _full_evaluation_run(events: list[PatientEvent], policy: Policy = DEFAULT_POLICY) -> list[str]:
    """The records one at a time, every rule evaluated over the whole history (no tails)."""
    state = PatientState.new(events[0].patient_id)
    out: list[AlertEvent] = []
    for event in events:
        state.tails.clear()
        for result in apply_all(state, [event], policy):
            out += result.alerts
    return [a.model_dump_json() for a in out]


def _incremental_run(events: list[PatientEvent], policy: Policy = DEFAULT_POLICY) -> list[str]:
    state = PatientState.new(events[0].patient_id)
    out: list[AlertEvent] = []
    for event in events:
        for result in apply_all(state, [event], policy):
            out += result.alerts
    return [a.model_dump_json() for a in out]


@PROPERTY
@given(censored_specs, st.booleans())
def test_the_incremental_path_equals_full_evaluation(specs: list, in_order: bool) -> None:
    if in_order:  # the incremental path's case: results arriving as they are collected
        specs = sorted(specs, key=lambda s: (s[0][1], s[0][2]))
    events = timeline(specs).events
    assert _incremental_run(events) == _full_evaluation_run(events)


def five_years(values: list[tuple[int, int, int, int]]) -> Timeline:
    """Monthly CD19, IgG, ANC and ferritin for 5 years, values drawn per month."""
    t = Timeline("LONG").infusion(risk_factors=["low_cell_dose"]).ferritin(-2, 400)
    for day in (3, 6, 9, 12):
        t.anc(day, 300)
    for month, (cd19, igg, anc, ferritin) in enumerate(values, start=1):
        day = 30 * month
        t.cd19_pct(day, cd19 / 10).igg(day + 1, igg).anc(day + 2, anc).ferritin(day + 2, ferritin)
        t.fibrinogen(day + 2, 120 if ferritin > 2000 else 300)
    return t


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 5, 15, 30]),
            st.sampled_from([250, 399, 400, 700]),
            st.sampled_from([80, 400, 900, 2500]),
            st.sampled_from([300, 900, 3000, 9000]),
        ),
        min_size=60,
        max_size=60,
    ),
    st.sampled_from([(730, 120), (60, 16), (90, 24)]),
)
def test_five_year_patients_give_the_same_alerts_under_any_history_bounds(
    values: list, bounds: tuple[int, int]
) -> None:
    events = five_years(values).events
    unbounded = Policy(history_window_days=100_000, max_results_per_analyte=100_000)
    window, cap = bounds
    bounded = Policy(history_window_days=window, max_results_per_analyte=cap)

    def key(alerts: list[AlertEvent]) -> list[tuple]:
        return [
            (a.rule, a.action, a.severity, a.event_time, a.episode_start, a.alert_id)
            for a in alerts
        ]

    reference = run(events, unbounded, now=at_day(1900))
    assert key(run(events, bounded, now=at_day(1900))) == key(reference)


def _benign(result: LabResult) -> float:
    """A value that meets no alert condition for its analyte (B cells stay aplastic)."""
    return {
        Analyte.ANC: 3000.0,
        Analyte.PLATELETS: 250.0,
        Analyte.IGG: 900.0,
        Analyte.CD19_PCT: 0.0,
        Analyte.CD19_ABS: 0.0,
        Analyte.FERRITIN: 100.0,
        Analyte.FIBRINOGEN: 300.0,
        Analyte.ALT: 20.0,
        Analyte.TRIGLYCERIDES: 100.0,
    }[result.analyte or Analyte.ANC]
