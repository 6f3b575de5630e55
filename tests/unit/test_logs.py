"""The PHI filter scrubs what third-party code might log."""

import io
import json
import logging

from streams.logs import REDACTED, JsonFormatter, protect, redact

PID = "PID|1||MRN-4711^^^HOSP^MR||Doe^Jane||20150101|F"
OBX = "OBX|1|NM|751-8^ANC^LN||420|/uL|||||F"


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    protect(handler)
    logger = logging.getLogger("test-phi")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_hl7_segments_and_json_identifiers_are_cut() -> None:
    text = redact(f"bad message MSH|^~\\&|LAB\r{PID}\r{OBX}")
    assert "MRN-4711" not in text and "Doe" not in text and "420" not in text
    assert f"PID|{REDACTED}" in text and f"OBX|{REDACTED}" in text
    assert "MRN-4711" not in redact('{"patient_id": "MRN-4711", "analyte": "anc"}')


def test_extra_fields_args_and_exceptions_are_redacted() -> None:
    logger, stream = _capture()
    logger.warning(
        "record %s rejected",
        '{"patient_id": "MRN-4711"}',
        extra={"patient_id": "MRN-4711", "reason": "unknown_unit"},
    )
    try:
        raise ValueError(f"cannot parse {PID}")
    except ValueError:
        logger.exception("parser failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "MRN-4711" not in stream.getvalue() and "Doe" not in stream.getvalue()
    assert lines[0]["patient_id"] == REDACTED and lines[0]["reason"] == "unknown_unit"
    assert "ValueError" in lines[1]["exception"]


def test_records_are_not_mutated_so_other_handlers_format_them_normally() -> None:
    logger, stream = _capture()
    plain = io.StringIO()
    other = logging.StreamHandler(plain)
    other.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(other)
    logger.warning("100%% of %s results at %d", "anc", 3)
    logger.warning("traceback line: msg = msg % self.args")
    assert plain.getvalue().splitlines() == [
        "100% of anc results at 3",
        "traceback line: msg = msg % self.args",
    ]
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        "100% of anc results at 3",
        "traceback line: msg = msg % self.args",
    ]
    protect(other)
    protect(other)
    assert len(other.filters) == 1
