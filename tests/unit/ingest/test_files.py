"""Reading input files (streams/ingest/files.py)."""

import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import Policy
from streams.ingest import files
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.files import FORMATS, InputItem, format_for_path, read_items, read_path
from streams.ingest.hl7.oru import Hl7Config

Kinds = Callable[[Iterable[Any]], list[str]]


def items(data: bytes, fmt: str, policy: Policy, hl7: Hl7Config | None = None) -> list[InputItem]:
    return list(read_items(io.BytesIO(data), fmt, "in", policy, hl7 or Hl7Config()))


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("a.ndjson", "ndjson"),
        ("a.jsonl", "ndjson"),
        ("dir/A.NDJSON", "ndjson"),
        ("a.hl7", "hl7"),
        ("a.json", "fhir"),
        (Path("x/y.json"), "fhir"),
        ("a.csv", None),
        ("a", None),
        ("a.hl7.gz", None),
    ],
)
def test_format_for_path(path: str | Path, fmt: str | None) -> None:
    assert format_for_path(path) == fmt
    assert fmt is None or fmt in FORMATS


# --- NDJSON -------------------------------------------------------------------------------------

LAB = {
    "type": "lab_result",
    "patient_id": "P001",
    "loinc": "751-8",
    "value": 0.42,
    "unit": "10*9/L",
    "collected_at": "2026-01-05T08:00:00Z",
}
INFUSION = {"type": "infusion", "patient_id": "P001", "infused_at": "2026-01-01T10:00:00Z"}
EVENT = {
    "type": "clinical_event",
    "patient_id": "P001",
    "kind": "ivig_given",
    "at": "2026-02-01T09:00:00Z",
}


def ndjson(*records: Any) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def test_ndjson_records(policy: Policy, kinds: Kinds) -> None:
    data = ndjson(
        INFUSION,
        LAB,
        b"",
        b"   ",
        {**LAB, "loinc": "2345-7"},
        b"{broken",
        {"type": "vital_sign"},
        {**LAB, "collected_at": "2026-01-05T08:00:00"},
        EVENT,
    )
    result = items(data, "ndjson", policy)
    assert [i.location for i in result] == [f"in:{n}" for n in (1, 2, 5, 6, 7, 8, 9)]
    assert kinds(i.outcome for i in result) == [
        "accepted",
        "accepted",
        "unmapped",
        "rejected:malformed_json",
        "rejected:unknown_type",
        "rejected:naive_datetime",
        "accepted",
    ]
    infusion, lab = result[0].outcome, result[1].outcome
    assert isinstance(infusion, Infusion)
    assert isinstance(result[-1].outcome, ClinicalEvent)
    assert isinstance(lab, LabResult)
    assert (lab.value, lab.unit) == (420, "/uL")  # normalised
    assert result[3].raw == "{broken"


def test_ndjson_bom_and_crlf(policy: Policy) -> None:
    data = b"\xef\xbb\xbf" + json.dumps(LAB).encode() + b"\r\n" + json.dumps(LAB).encode()
    result = items(data, "ndjson", policy)
    assert [type(i.outcome) for i in result] == [LabResult, LabResult]
    assert not result[0].raw.endswith("\r")


def test_ndjson_fhir_resources_are_not_fhir(policy: Policy) -> None:
    (item,) = items(ndjson({"resourceType": "Observation"}), "ndjson", policy)
    assert isinstance(item.outcome, Rejection)
    assert item.outcome.reason is RejectReason.UNKNOWN_TYPE


def test_items_expose_outcome_and_dead_letter(policy: Policy) -> None:
    result = items(ndjson(LAB, b"{broken", {**LAB, "loinc": "2345-7"}), "ndjson", policy)
    accepted, rejected, unmapped = result
    assert (accepted.accepted, accepted.rejected, accepted.unmapped) == (True, False, False)
    assert (rejected.accepted, rejected.rejected, rejected.unmapped) == (False, True, False)
    assert (unmapped.accepted, unmapped.rejected, unmapped.unmapped) == (False, False, True)
    assert accepted.dead_letter("replay") is None
    letter = rejected.dead_letter("replay")
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.raw, letter.location, letter.source) == (
        RejectReason.MALFORMED_JSON,
        "{broken",
        "in:2",
        "replay",
    )


# --- HL7 ----------------------------------------------------------------------------------------


def test_hl7_batch_file(
    data_dir: Path, policy: Policy, hl7_config: Hl7Config, kinds: Kinds
) -> None:
    result = list(read_path(data_dir / "hl7/batch.hl7", policy, hl7_config))
    assert [(i.location, kinds([i.outcome])[0]) for i in result] == [
        ("batch.hl7:message 1:OBX 1", "accepted"),
        ("batch.hl7:message 1:OBX 2", "unmapped"),
        ("batch.hl7:message 2", "rejected:unsupported_message"),
        ("batch.hl7:message 3", "rejected:missing_patient_id"),
        ("batch.hl7:message 4", "rejected:malformed_hl7"),
    ]
    assert result[2].raw.startswith("MSH|^~\\&|KIDS-ADT|")
    assert result[0].raw == "OBX|1|NM|751-8^Neutrophils^LN||1.1|10*9/L|||||F"


def test_hl7_mllp_framing_and_junk(data_dir: Path, policy: Policy, hl7_config: Hl7Config) -> None:
    message = (data_dir / "hl7/full_panel.hl7").read_bytes()
    data = b"garbage line\r" + b"\x0b" + message + b"\x1c\r" + b"\x0b" + message + b"\x1c\r"
    result = items(data, "hl7", policy, hl7_config)
    assert result[0].location == "in:message 1"
    assert isinstance(result[0].outcome, Rejection)
    assert result[0].outcome.reason is RejectReason.MALFORMED_HL7
    assert len(result) == 1 + 2 * 18
    assert all(isinstance(i.outcome, LabResult) for i in result[1:])
    assert result[-1].location == "in:message 3:OBX 18"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"])
def test_hl7_splitting_does_not_depend_on_chunk_boundaries(
    data_dir: Path,
    policy: Policy,
    hl7_config: Hl7Config,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    separator: bytes,
) -> None:
    message = (data_dir / "hl7/full_panel.hl7").read_bytes().replace(b"\r", separator)
    expected = items(message * 3, "hl7", policy, hl7_config)
    monkeypatch.setattr(files, "_CHUNK", chunk)
    result = items(b"\xef\xbb\xbf" + message * 3, "hl7", policy, hl7_config)
    assert [(i.location, i.outcome) for i in result] == [(i.location, i.outcome) for i in expected]
    assert len(result) == 54


# --- FHIR ---------------------------------------------------------------------------------------


def test_fhir_document(
    data_dir: Path, policy: Policy, hl7_config: Hl7Config, fhir_config: FhirConfig
) -> None:
    result = list(read_path(data_dir / "fhir/full_panel.json", policy, hl7_config, fhir_config))
    assert len(result) == 18
    assert result[0].location == "full_panel.json:entry 0"
    assert all(isinstance(i.outcome, LabResult) for i in result)


def test_fhir_document_rejection_is_one_item(policy: Policy) -> None:
    (item,) = items(b'{"resourceType": "Patient"}', "fhir", policy)
    assert item.location == "in"
    assert isinstance(item.outcome, Rejection)
    assert item.outcome.reason is RejectReason.UNSUPPORTED_MESSAGE


def test_unknown_format(policy: Policy) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        items(b"", "csv", policy)
    with pytest.raises(ValueError, match="extension"):
        list(read_path(Path("x.csv"), policy, Hl7Config()))


# --- streaming ----------------------------------------------------------------------------------


class Endless(io.RawIOBase):
    """A stream that never ends: reading it whole would hang the test."""

    def __init__(self, unit: bytes) -> None:
        self.unit = unit
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        start = self.served % len(self.unit)
        buffer[:size] = (self.unit[start:] + self.unit * (size // len(self.unit) + 1))[:size]
        self.served += size
        return size


@pytest.mark.parametrize("fmt", ["ndjson", "hl7"])
def test_reading_streams(data_dir: Path, policy: Policy, hl7_config: Hl7Config, fmt: str) -> None:
    unit = ndjson(LAB) if fmt == "ndjson" else (data_dir / "hl7/full_panel.hl7").read_bytes()
    stream = io.BufferedReader(Endless(unit))
    iterator: Iterator[InputItem] = read_items(stream, fmt, "in", policy, hl7_config)
    first = [next(iterator) for _ in range(40)]
    assert all(isinstance(i.outcome, LabResult) for i in first)
