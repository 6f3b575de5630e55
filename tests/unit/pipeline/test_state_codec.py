"""The Faust table codec: exact round trips, compact states, clear errors on bad bytes."""

import json
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.vocab import Analyte, ClinicalEventKind
from streams.core.engine import apply, tick
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.core.state import PatientState
from streams.pipeline.state_codec import StateFormatError, decode_state, encode_state
from streams.testing import DAY0, Timeline, at_day
from tests.strategies import result_specs, timeline


def _state_after(events: list, now: datetime | None = None) -> PatientState:
    state = PatientState.new(events[0].patient_id)
    for event in events:
        apply(state, event, DEFAULT_POLICY)
    if now is not None:
        tick(state, now, DEFAULT_POLICY)
    return state


@settings(max_examples=80, deadline=None)
@given(result_specs, st.booleans())
def test_round_trip_is_exact_for_any_history(specs: list, with_tick: bool) -> None:
    t = timeline(specs).event(ClinicalEventKind.IVIG_GIVEN.value, day=40)
    state = _state_after(t.events, at_day(400) if with_tick else None)
    assert decode_state(encode_state(state)) == state
    assert encode_state(decode_state(encode_state(state))) == encode_state(state)


@settings(max_examples=60, deadline=None)
@given(result_specs)
def test_rows_kept_on_results_encode_as_rows_made_afresh(specs: list) -> None:
    """Each stored result keeps its encoded row and the codec its JSON text; a state encoded
    (and read back) after every record encodes exactly as one whose rows and texts are made
    anew, and as the same state when its table of sources is made anew too."""
    t = timeline(specs)
    state = PatientState.new(t.events[0].patient_id)
    for event in t.events:
        apply(state, event, DEFAULT_POLICY)
        state = decode_state(encode_state(state))
    kept = encode_state(state)
    for history in state.results.values():
        for result in history:
            result.row = None
    state.codec_memo.fragments.clear()
    assert kept == encode_state(state)
    state.codec_memo = None
    assert decode_state(encode_state(state)) == decode_state(kept)


def test_round_trip_keeps_every_field_of_a_rich_state() -> None:
    t = Timeline("RICH").infusion(
        day=0, costim="CD28", prior_hct=True, hct_eligible=None, risk_factors=["tp53_mutated"]
    )
    t.mrd(day=30, fraction=None, detected=True, method="flow", sensitivity=1e-4)
    t.igg(day=31, mg_dl=300).igg(day=31, mg_dl=320, status="corrected", accession="RICH-A2")
    t.anc(day=2, per_ul=100, status="preliminary").igg(
        day=32, mg_dl=1, status="cancelled", accession="RICH-A2"
    )
    t.lab("anc", day=3, value=100, comparator="<").event("relapse", day=300, detail="cd19_negative")
    for day in range(40, 400, 7):  # long enough to be pruned under a 60-day window
        t.igg(day=day, mg_dl=350).anc(day=day, per_ul=300).cd19_pct(day=day, pct=0.1)
    policy = Policy(history_window_days=60, max_results_per_analyte=16)
    state = PatientState.new("RICH")
    for event in t.events:
        apply(state, event, policy)
    tick(state, DAY0 + timedelta(days=520, microseconds=250), policy)
    assert state.cut is not None and state.carries and state.gaps
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert decoded.clock is not None and decoded.clock.tzinfo is not None


def test_unknown_format_and_corrupt_bytes_are_errors() -> None:
    with pytest.raises(StateFormatError, match="format"):
        decode_state(b'{"f": 99}')
    with pytest.raises(StateFormatError, match="corrupt"):
        decode_state(b"\x00not json")


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.sampled_from([(0, 700), (1, 300), (5, 900), (30, 250)]), min_size=40, max_size=40)
)
def test_a_state_stored_and_read_back_after_every_record_decides_the_same(values: list) -> None:
    # the worker may decode a patient's state from the table for any batch: carries (pruning),
    # gap records and alert ids must survive, and the rebuilt tails must decide the same
    t = Timeline("STORED").infusion(risk_factors=["low_cell_dose"]).cd19_pct(day=14, pct=0.1)
    for month, (cd19, igg) in enumerate(values, start=1):
        t.cd19_pct(day=30 * month, pct=cd19 / 10).igg(day=30 * month + 1, mg_dl=igg)
    policy = Policy(history_window_days=60, max_results_per_analyte=16)
    kept = PatientState.new("STORED")
    stored = encode_state(PatientState.new("STORED"))
    kept_alerts, stored_alerts = [], []
    for event in t.events:
        kept_alerts += apply(kept, event, policy).alerts
        state = decode_state(stored)
        stored_alerts += apply(state, event, policy).alerts
        stored = encode_state(state)
    for when in (at_day(1300), at_day(1400)):
        kept_alerts += tick(kept, when, policy)[1]
        state = decode_state(stored)
        stored_alerts += tick(state, when, policy)[1]
        stored = encode_state(state)
    assert [a.model_dump_json() for a in stored_alerts] == [
        a.model_dump_json() for a in kept_alerts
    ]
    assert kept.cut is not None


def test_the_table_of_sources_grows_and_is_made_anew_when_a_source_is_gone() -> None:
    t = Timeline("SRC").infusion(day=0)
    t.igg(day=10, mg_dl=700, source="LAB-A").igg(day=20, mg_dl=650, source="LAB-B")
    state = _state_after(t.events)
    first = encode_state(state)
    assert json.loads(first)["s"] == ["LAB-A", "LAB-B"]
    apply(state, Timeline("SRC").anc(day=30, per_ul=900, source="LAB-C").events[0], DEFAULT_POLICY)
    grown = encode_state(state)
    assert json.loads(grown)["s"] == ["LAB-A", "LAB-B", "LAB-C"]  # appended: texts stay valid
    assert decode_state(grown) == state
    state.results[Analyte.IGG] = [r for r in state.results[Analyte.IGG] if r.source != "LAB-A"]
    shrunk = encode_state(state)
    assert json.loads(shrunk)["s"] == ["LAB-B", "LAB-C"]
    assert decode_state(shrunk) == state
