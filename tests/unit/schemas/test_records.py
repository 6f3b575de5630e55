"""``decode_record``: a line read by pydantic's JSON parser decodes exactly as the checked path
(``json.loads``, then the model) decodes it, and every line that parser refuses gets the checked
path's rejection -- the same record or the same reasons, whichever parser read it."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.lab_result import LabResult
from schemas.records import Rejection, _decode_checked, decode_record
from schemas.vocab import RejectReason
from tests.strategies import mutated

DATA = Path(__file__).resolve().parents[2] / "data"
LAB = (
    b'{"type":"lab_result","patient_id":"P1","analyte":"anc","value":450,"unit":"/uL",'
    b'"collected_at":"2026-01-05T06:00:00Z"}'
)
LINES = [
    line
    for path in sorted((DATA / "scenarios").glob("*.ndjson"))
    if ".expected." not in path.name
    for line in path.read_bytes().splitlines()[:40]
    if line.strip()
] + [
    line
    for path in sorted((DATA / "fuzz" / "ndjson").iterdir())
    for line in path.read_bytes().splitlines()
]

NASTY = [
    LAB + b" trailing",
    LAB[:-1] + b',"value":"450"}',
    LAB[:-1] + b',"value":1e999}',
    LAB[:-1] + b',"value":NaN}',
    LAB[:-1] + b',"value":123456789012345678901234567890}',
    LAB[:-1] + b',"value":-0.0}',
    LAB[:-1] + b',"value":0.1000000000000000055511151231257827}',
    LAB.replace(b'"P1"', b'"\\ud800"'),
    LAB.replace(b'"P1"', b'"\xed\xa0\x80"'),
    LAB.replace(b'"P1"', b'"P\\u0000"'),
    LAB.replace(b'"type":"lab_result",', b""),
    LAB.replace(b'"lab_result"', b'["lab_result"]'),
    LAB.replace(b'"lab_result"', b'"Lab_Result"'),
    b"\xef\xbb\xbf" + LAB,
    LAB.decode().encode("utf-16"),
    b"[" * 10_000,
    b"",
    b"null",
    b'"lab_result"',
]


def assert_same(line: bytes | str) -> None:
    assert decode_record(line) == _decode_checked(line)


@pytest.mark.parametrize("line", NASTY + LINES)
def test_every_line_decodes_as_the_checked_path_decodes_it(line: bytes) -> None:
    assert_same(line)
    if isinstance(line, bytes):
        assert_same(line.decode("utf-8", "surrogateescape"))


def test_the_fast_path_reads_a_plain_result_and_the_checked_path_rejects_the_damaged_one() -> None:
    decoded = decode_record(LAB)
    assert isinstance(decoded, LabResult) and decoded.value == 450.0
    damaged = decode_record(LAB + b" trailing")
    assert isinstance(damaged, Rejection) and damaged.reason is RejectReason.MALFORMED_JSON
    assert isinstance(decode_record(LAB[:-1] + b',"value":"450"}'), Rejection)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(LINES))
def test_mutated_lines_decode_as_the_checked_path_decodes_them(line: bytes) -> None:
    assert_same(line)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["patient_id", "analyte", "value", "unit", "comparator", "detected"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    )
)
def test_fields_of_any_json_type_decode_as_the_checked_path_decodes_them(
    fields: dict[str, object],
) -> None:
    record = {"type": "lab_result", "collected_at": "2026-01-05T06:00:00Z", **fields}
    assert_same(json.dumps(record))
