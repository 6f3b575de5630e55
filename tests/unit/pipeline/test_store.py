"""Stored patient states: the open-alert summary in front of the codec bytes."""

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.lab_result import LabResult
from schemas.records import decode_record
from schemas.vocab import RuleName, Severity
from streams import synthetic
from streams.core.engine import apply_all
from streams.core.policy import DEFAULT_POLICY
from streams.core.state import PatientState
from streams.ingest.normalise import normalise_lab_result
from streams.pipeline.state_codec import StateFormatError, encode_state
from streams.pipeline.store import open_alerts, open_alerts_of, pack, unpack


def state_of(trajectory: str) -> PatientState:
    state = PatientState.new("STORE-1")
    events = []
    for record in synthetic.patient(trajectory, "STORE-1", datetime.now(UTC)):
        event = decode_record(json.dumps(record).encode())
        if isinstance(event, LabResult):
            event = normalise_lab_result(event, DEFAULT_POLICY)
        events.append(event)
    apply_all(state, events, DEFAULT_POLICY)  # type: ignore[arg-type]
    return state


@pytest.mark.parametrize("trajectory", synthetic.TRAJECTORIES)
def test_a_packed_state_round_trips_with_its_open_alerts(trajectory: str) -> None:
    state = state_of(trajectory)
    value = pack(state)
    assert unpack(value) == state
    assert open_alerts_of(value) == open_alerts(state)


def test_the_summary_names_the_open_alerts() -> None:
    state = state_of("mrd_positive")
    assert open_alerts(state)  # the story leaves alerts open
    assert pack(state).startswith(b"\x1ehct_consolidation:warning;mrd_positive:critical\n")


def test_values_without_a_summary_are_still_read() -> None:
    state = state_of("iec_hs")
    legacy = encode_state(state)
    assert unpack(legacy) == state
    assert open_alerts_of(legacy) == open_alerts(state)


@given(st.binary(max_size=200))
def test_any_summary_is_read_or_a_format_error(data: bytes) -> None:
    with contextlib.suppress(StateFormatError):
        for rule, severity in open_alerts_of(b"\x1e" + data):
            assert isinstance(rule, RuleName) and isinstance(severity, Severity)


@pytest.mark.parametrize(
    "value",
    [b"\x1e", b"\x1ebca_loss\n{}", b"\x1eno_rule:critical\n{}", b"\x1ebca_loss:grave\n{}"],
)
def test_a_broken_summary_is_a_format_error(value: bytes) -> None:
    with pytest.raises(StateFormatError):
        open_alerts_of(value)
