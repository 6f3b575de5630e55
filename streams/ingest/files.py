"""Reading input files (``carwatch replay``, backfills) into one ``InputItem`` per record.

Formats (README.md "Other commands"): ``ndjson`` — the wire contracts, one JSON object
per line (``.ndjson``/``.jsonl``); ``hl7`` — HL7 v2 ORU^R01 messages (``.hl7``), several per file,
separated by a new ``MSH`` segment, MLLP framing bytes (``0x0b`` … ``0x1c``) or batch/file
header and trailer segments (``FHS``/``BHS``/``BTS``/``FTS``, which are skipped); ``fhir`` — one
FHIR R4 document, a Bundle or an Observation (``.json``). NDJSON stays our wire contract: FHIR
resources in an ``.ndjson`` file are not read as FHIR (they fail as ``unknown_type``).

Reading streams: NDJSON line by line and HL7 message by message, so a long backfill needs no
more memory than one record; a FHIR document is one JSON value and is read whole.

Locations: ``name:LINE`` (NDJSON, 1-based line numbers, blank lines skipped but counted),
``name:message N:OBX k`` (HL7; a whole-message rejection is one item ``name:message N``),
``name:entry i`` / ``name:Observation`` (FHIR; a document rejection is one item ``name``).
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import BinaryIO, Final

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import Rejection, WireRecord, decode_record
from schemas.vocab import RejectReason
from streams.core.policy import Policy
from streams.ingest.fhir.observation import DEFAULT_FHIR_CONFIG, FhirConfig, parse_fhir
from streams.ingest.hl7.oru import Hl7Config, parse_oru
from streams.ingest.jsonsafe import clean_text, load_json
from streams.ingest.loinc import analyte_for_loinc
from streams.ingest.normalise import Unmapped, is_mismatch, normalise_lab_result

FORMATS: Final = ("ndjson", "hl7", "fhir")
_SUFFIXES: Final = {".ndjson": "ndjson", ".jsonl": "ndjson", ".hl7": "hl7", ".json": "fhir"}
_CHUNK: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class InputItem:
    """One record read from a file and what became of it.

    ``outcome`` is a wire record ready for the pipeline (lab results already normalised), a
    ``Rejection`` for the dead-letter topic, or ``Unmapped`` (counted only).
    """

    location: str
    raw: str
    outcome: WireRecord | Rejection | Unmapped
    #: accepted as another CD19 analyte than its code named (see ``streams.ingest.normalise``)
    mismatch: bool = False

    @property
    def accepted(self) -> bool:
        return not isinstance(self.outcome, Rejection | Unmapped)

    @property
    def rejected(self) -> bool:
        return isinstance(self.outcome, Rejection)

    @property
    def unmapped(self) -> bool:
        return isinstance(self.outcome, Unmapped)

    def dead_letter(self, source: str, received_at: datetime | None = None) -> DeadLetter | None:
        """The ``carwatch.deadletter`` record of a rejected item (``None`` otherwise)."""
        if not isinstance(self.outcome, Rejection):
            return None
        return DeadLetter(
            reason=self.outcome.reason,
            details=self.outcome.details,
            raw=clean_text(self.raw),
            source=source,
            location=self.location,
            received_at=received_at,
        )


def format_for_path(path: str | PurePath) -> str | None:
    """The input format an extension implies (``None`` if it implies none)."""
    return _SUFFIXES.get(PurePath(path).suffix.lower())


def read_items(
    stream: BinaryIO,
    fmt: str,
    name: str,
    policy: Policy,
    hl7: Hl7Config,
    fhir: FhirConfig = DEFAULT_FHIR_CONFIG,
) -> Iterator[InputItem]:
    """Every record of ``stream`` in file order; never raises for bad content."""
    if fmt == "ndjson":
        yield from _ndjson(stream, name, policy)
    elif fmt == "hl7":
        yield from _hl7(stream, name, policy, hl7)
    elif fmt == "fhir":
        yield from _fhir(stream, name, policy, fhir)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def read_path(
    path: Path, policy: Policy, hl7: Hl7Config, fhir: FhirConfig = DEFAULT_FHIR_CONFIG
) -> Iterator[InputItem]:
    """``read_items`` for a file whose format its extension names."""
    fmt = format_for_path(path)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path} from its extension")
    with path.open("rb") as stream:
        yield from read_items(stream, fmt, path.name, policy, hl7, fhir)


def _ndjson(stream: BinaryIO, name: str, policy: Policy) -> Iterator[InputItem]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        raw = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if number == 1:
            raw = raw.lstrip("\ufeff")
            line = line.removeprefix(b"\xef\xbb\xbf")
        yield InputItem(f"{name}:{number}", raw, *ndjson_outcome(line, policy))


def ndjson_outcome(line: bytes, policy: Policy) -> tuple[WireRecord | Rejection | Unmapped, bool]:
    """One NDJSON line decoded (``streams.ingest.jsonsafe`` first: no crash on hostile input)
    and, for a lab result, normalised; with the ``mismatch`` flag."""
    try:
        obj = load_json(line)
    except ValueError as exc:
        return Rejection.of(RejectReason.MALFORMED_JSON, str(exc)[:300]), False
    if not isinstance(obj, dict):
        return Rejection.of(RejectReason.MALFORMED_JSON, "a record must be a JSON object"), False
    outcome: WireRecord | Rejection | Unmapped = decode_record(obj)
    if not isinstance(outcome, LabResult):
        return outcome, False
    claimed = outcome.analyte or analyte_for_loinc(outcome.loinc)
    normalised = normalise_lab_result(outcome, policy)
    return normalised, is_mismatch(claimed, normalised)


# Segment separators, MLLP start/end bytes.
_SPLIT = re.compile(rb"(\r\n|\r|\n|\x0b|\x1c)")
_BATCH_SEGMENTS: Final = (b"FHS", b"BHS", b"BTS", b"FTS")


def _hl7_messages(stream: BinaryIO) -> Iterator[bytes]:
    """Raw messages (segments joined by ``\\r``); junk before the first MSH is its own chunk."""
    current: list[bytes] = []
    pending = b""
    first = True

    def segments() -> Iterator[bytes]:
        nonlocal pending, first
        while chunk := stream.read(_CHUNK):
            if first:
                chunk = chunk.removeprefix(b"\xef\xbb\xbf")
                first = False
            parts = _SPLIT.split(pending + chunk)
            pending = parts.pop()
            yield from parts
        if pending:
            yield pending

    for part in segments():
        if part in (b"\x0b", b"\x1c"):
            if current:
                yield b"\r".join(current)
                current = []
            continue
        if part in (b"\r\n", b"\r", b"\n") or not part.strip():
            continue
        segment = part.lstrip(b" \t").removeprefix(b"\xef\xbb\xbf")
        if segment[:3] in _BATCH_SEGMENTS:
            if current:
                yield b"\r".join(current)
                current = []
            continue
        if segment.startswith(b"MSH") and current:
            yield b"\r".join(current)
            current = []
        current.append(segment)
    if current:
        yield b"\r".join(current)


def _hl7(stream: BinaryIO, name: str, policy: Policy, config: Hl7Config) -> Iterator[InputItem]:
    for number, raw in enumerate(_hl7_messages(stream), start=1):
        message = parse_oru(raw, config, policy)
        text = raw.decode("utf-8", errors="replace")
        where = f"{name}:message {number}"
        if message.message_rejection is not None:
            yield InputItem(where, text, message.message_rejection)
            continue
        for item in message.items:
            yield InputItem(f"{where}:{item.location}", item.raw, item.outcome, item.mismatch)


def _fhir(stream: BinaryIO, name: str, policy: Policy, config: FhirConfig) -> Iterator[InputItem]:
    data = stream.read()
    parsed = parse_fhir(data, config, policy)
    if parsed.document_rejection is not None:
        yield InputItem(name, data.decode("utf-8", errors="replace"), parsed.document_rejection)
        return
    for item in parsed.items:
        yield InputItem(f"{name}:{item.location}", item.raw, item.outcome, item.mismatch)
