"""Property tests of the engine's invariants (DESIGN.md "Nothing lost, nothing doubled").

- the same input, replayed or with duplicated records, gives byte-identical alert output;
- any arrival order of the same results gives the same final set of active alerts -- the same
  rules, severities and episode starts. (Alert ids can differ: an episode keeps the id it was
  first announced under when a late result moves its start earlier, rather than being retracted
  and raised a second time, see ``streams.core.lifecycle``.);
- a condition that stays true never raises twice;
- a value corrected or cancelled away always ends in a retraction.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.lab_result import LabResult
from schemas.vocab import AlertAction, Analyte, ResultStatus, RuleName
from streams.core.engine import PatientEvent
from streams.testing import Timeline, active, run
from tests.strategies import result_specs, timeline


def dumps(events: list[PatientEvent]) -> list[str]:
    return [a.model_dump_json() for a in run(events)]


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(result_specs)
def test_replaying_the_same_input_is_byte_identical(specs: list) -> None:
    events = timeline(specs).events
    assert dumps(events) == dumps(list(events))


@PROPERTY
@given(result_specs, st.data())
def test_duplicated_records_change_nothing(specs: list, data: st.DataObject) -> None:
    events = timeline(specs).events
    doubled: list[PatientEvent] = []
    for event in events:
        doubled.append(event)
        if data.draw(st.booleans()):
            doubled.append(event.model_copy())
    assert dumps(doubled) == dumps(events)


@PROPERTY
@given(result_specs, st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_active_alerts(specs: list, random) -> None:
    events = timeline(specs).events
    infusion, results = events[0], events[1:]
    shuffled = list(results)
    random.shuffle(shuffled)
    in_order = active(run(events)).values()
    any_order = active(run([infusion, *shuffled])).values()
    assert sorted((a.rule, a.severity, a.episode_start) for a in in_order) == sorted(
        (a.rule, a.severity, a.episode_start) for a in any_order
    )


@PROPERTY
@given(result_specs)
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
