"""The Faust table codec: exact round trips, compact states, clear errors on bad bytes."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.vocab import ClinicalEventKind
from streams.core.engine import apply, tick
from streams.core.policy import DEFAULT_POLICY
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


def test_round_trip_keeps_every_field_of_a_rich_state() -> None:
    t = Timeline("RICH").infusion(
        day=0, costim="CD28", prior_hct=True, hct_eligible=None, risk_factors=["tp53_mutated"]
    )
    t.mrd(day=30, fraction=None, detected=True, method="flow", sensitivity=1e-4)
    t.igg(day=31, mg_dl=300).igg(day=31, mg_dl=320, status="corrected", accession="RICH-A2")
    t.anc(day=2, per_ul=100, status="preliminary").igg(
        day=32, mg_dl=1, status="cancelled", accession="RICH-A2"
    )
    state = _state_after(t.events, now=DAY0 + timedelta(days=90, microseconds=250))
    state.pruned_before = {next(iter(state.results)): datetime(2025, 1, 1, tzinfo=UTC)}
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert decoded.clock is not None and decoded.clock.tzinfo is not None


def test_unknown_format_and_corrupt_bytes_are_errors() -> None:
    with pytest.raises(StateFormatError, match="format"):
        decode_state(b'{"f": 99}')
    with pytest.raises(StateFormatError, match="corrupt"):
        decode_state(b"\x00not json")
