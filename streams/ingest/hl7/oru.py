"""HL7 v2 ORU^R01 (unsolicited observation result) → one outcome per OBX, and the ACK reply.

Standard: HL7 Version 2.5.1, chapter 2 (control: encoding characters, escape sequences, the DTM
data type, acknowledgments) and chapter 7 (observation reporting: OBR, OBX, table 0085 result
status). Later 2.x versions read the same way; 2.3/2.4 messages (``TS`` timestamps) work too.
docs/feeds.md is the interface engineer's view of the same rules.

The tokeniser, escapes and DTM parsing are ours rather than python-hl7's (``hl7.parse``,
``Message.unescape``, ``hl7.parse_datetime``), which do not meet the requirements here:
``hl7.parse`` splits segments on ``\\r`` only (real feeds send LF and CRLF) and raises on
malformed input, where every input — arbitrary bytes included — must yield a value
(``Hl7Message``) and every failure a ``Rejection`` with a ``RejectReason``; ``unescape`` expands
``\\.sp<n>\\`` to *n* characters with no bound (``\\.sp999999999\\`` is a gigabyte) and logs
the whole field on an unknown sequence (patient data in the log); ``parse_datetime`` has no
notion of a feed's zone. Every step here is linear in the message size (a field of 40,000
components, a value of 1 MB) and uses no regular expression with nested quantifiers.
python-hl7 is the reference the tests compare this tokeniser with, and the MLLP client in them.

What is read:

- MSH-1/2 separators (4 or 5 encoding characters, the 5th being v2.7's truncation character),
  MSH-3/4 sending application/facility (``source``), MSH-9 type (only ``ORU^R01``), MSH-10
  control id, MSH-11/12 for the ACK, MSH-18 character set (UTF-8, or ``8859/1``; empty and the
  bytes not UTF-8: ISO 8859-1 as well, so that a stray byte spoils only its own field).
- PID-3 patient identifier list: the identifier whose assigning authority (CX-4, namespace or
  universal id) equals ``Hl7Config.assigning_authority``; without that setting, the first.
- OBR-2/3 placer/filler order numbers (``accession`` = OBR-3, else OBR-2, else MSH-10),
  OBR-7 collection time, OBR-22 report time, OBR-25 result status (fallback for OBX-11), and
  SPM-17 (the collection time of the OBR group's specimen) when OBX-14 and OBR-7 are empty.
- OBX-2 value type, OBX-3 test code, OBX-5 value, OBX-6 unit (CWE, first component),
  OBX-11 result status, OBX-14 collection time (wins over OBR-7, unless it is later than the
  result time, as a verification time put there would be), OBX-17 method (MRD),
  OBX-19 analysis time (wins over OBR-22 as ``resulted_at``).

Decisions (safety first — a wrong value must never become an alert):

- Test codes: a code is LOINC only when its coding system (CWE-3, or CWE-6 for the alternate
  triplet) says so (``LN``, ``LOINC``, the LOINC OID). A LOINC-shaped code in another or an empty
  system (``1554-5^GLUCOSE^POST 12H CFST:...`` in the HL7 2.4 example) is *not* read as LOINC —
  local code systems reuse such strings — it is only looked up in ``Hl7Config.local_codes``
  (which may also name LOINC codes our table does not map, e.g. a site's MRD code). Both CWE
  triplets are read; codes that map to different analytes → ``invalid_field``
  (``streams.ingest.loinc.resolve_codes``, shared with FHIR).
- Values: NM is text by nature and is parsed strictly: an optional comparator, then a decimal
  number and nothing else (``12a``, ``1e3``, ``1,5`` → ``invalid_value``). SN ``=``/no comparator
  is exact. A censored value (docs/clinical-spec.md §0 "Censored values": ``<0.1`` inside NM, SN
  ``<^0.1``, ``>^4``, ``<=``, ``>=``) is accepted with the limit as ``value`` and the comparator
  kept (unit conversion applies to the limit). SN ``<>`` (not equal), ranges and ratios are not
  one value: ``invalid_field``. For MRD, send ST/CWE text ("not detected", "detected, not
  quantifiable", "detected below LOQ", "positive", optionally "sensitivity 10^-4") or a number.
  ST/TX/FT text that is a plain number is accepted as NM; CWE/CE carry MRD only (SNOMED CT
  detected/not detected/positive/negative codes, else their text).
- Result status (OBX-11, else OBR-25): F, B → final; C, A → corrected; P, S → preliminary;
  X, D, W → cancelled (W "posted as wrong" withdraws the result); U (status change to final)
  → final, and without a value it is rejected (``missing_value``: the engine cannot promote a
  stored preliminary on its own; the sender must resend the result as F). I (pending), O (order detail), N (not asked) and R (entered, not verified)
  are not results: ``Unmapped`` with the status in the reason, never an error. Missing →
  ``missing_field``; anything else → ``unknown_vocabulary``.
- Timestamps (DTM ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``): at least a date is required.
  Without an offset a time is the sending facility's local time, as HL7 v2 defines it
  (docs/clinical-spec.md §0 "Time zones of feeds", rev. 2): the offset of the message's MSH-7 when it has
  one, else the feed's ``Hl7Config.default_timezone``, else the policy's ``timezone``; a date
  alone is local midnight. Impossible values (hour 26) → ``invalid_timestamp``. An unusable
  *optional* report time rejects the result too: a feed that sends one wrong time field is
  configured wrongly and should hear about it.
- Order of checks per OBX: the code first — an OBX that is not ours is ``Unmapped`` whatever
  else is wrong with it (a hospital feed is mostly other tests) — then status, times, value,
  unit and plausibility. A cancellation (X, D, W) whose value cannot be read still cancels.
- Whole-message rejections (``message_rejection``, no items): undecodable, not HL7 or without
  a message type in MSH-9 (``malformed_hl7``), not ``ORU^R01`` (``unsupported_message``), a PID without a usable
  identifier or no PID at all (``missing_patient_id``).

``location`` of an item is ``OBX n`` with n the OBX's position among the message's OBX segments
(1-based; set ids repeat in real feeds); ``raw`` is the OBX segment as received.
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import field_validator

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Analyte, Comparator, RejectReason, ResultStatus
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.ingest.config import FeedConfig
from streams.ingest.loinc import SentCode, is_loinc_system, resolve_codes
from streams.ingest.normalise import (
    SNOMED_FINDINGS,
    ResultItem,
    Unmapped,
    lab_result_from_fields,
    mrd_from_text,
    mrd_method_from_text,
    result_item,
)

Hl7Item = ResultItem

#: Message text of the last-resort guard: a parser bug, reported as a rejection (never raised).
PARSER_BUG: Final = "unexpected parser failure (a bug in carwatch, please report)"


class Hl7Config(FeedConfig):
    """Settings of an HL7 v2 feed: ``assigning_authority`` picks the PID-3 identifier whose CX-4
    matches it (else the first); ``default_timezone`` (IANA name) is the sending facility's zone
    for timestamps without an offset when MSH-7 has none (default: the policy's ``timezone``);
    the rest as ``FeedConfig``."""

    assigning_authority: str | None = None
    default_timezone: str | None = None

    @field_validator("default_timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    def zone(self, policy: Policy) -> tzinfo:
        """The zone of local timestamps when MSH-7 carries no offset."""
        return ZoneInfo(self.default_timezone) if self.default_timezone else policy.tz

    def zone_name(self, policy: Policy) -> str:
        """The zone ``zone`` returns, by name (the listener logs it at start)."""
        return self.default_timezone or policy.timezone


@dataclass(frozen=True, slots=True)
class Hl7Header:
    """The MSH fields an ACK needs (each HD/CWE kept as its unescaped components)."""

    sending_application: tuple[str, ...]
    sending_facility: tuple[str, ...]
    receiving_application: tuple[str, ...]
    receiving_facility: tuple[str, ...]
    message_type: tuple[str, ...]
    control_id: str | None
    processing_id: str | None
    version: str | None


@dataclass(frozen=True, slots=True)
class Hl7Message:
    """One parsed ORU^R01: either ``message_rejection`` or one item per OBX."""

    control_id: str | None
    message_rejection: Rejection | None
    items: list[ResultItem] = field(default_factory=list)
    header: Hl7Header | None = None


# --- tokenising ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Encoding:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str | None

    def unescape(self, text: str) -> str:
        """Decode HL7 escape sequences (2.5.1 section 2.7): separators, hex, formatting."""
        esc = self.escape
        if esc not in text:
            return text
        out: list[str] = []
        index = 0
        while index < len(text):
            char = text[index]
            if char != esc:
                out.append(char)
                index += 1
                continue
            end = text.find(esc, index + 1)
            if end == -1:
                out.append(text[index:])
                break
            out.append(self._sequence(text[index + 1 : end]))
            index = end + 1
        return "".join(out)

    def _sequence(self, seq: str) -> str:
        simple = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            "P": self.truncation or "",
            ".br": "\n",
            ".sp": "\n",
        }
        if seq in simple:
            return simple[seq]
        if seq[:1] == "X" and len(seq) > 1:
            try:
                data = bytes.fromhex(seq[1:])
            except ValueError:
                return ""
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data.decode("latin-1")
        # H/N highlighting, C/M character-set switches, Z application escapes, formatting
        # commands: nothing we can render in plain text.
        return ""

    def escape_text(self, text: str) -> str:
        """Escape ``text`` for use inside one component (for the ACK)."""
        pairs = (
            (self.escape, f"{self.escape}E{self.escape}"),
            (self.field, f"{self.escape}F{self.escape}"),
            (self.component, f"{self.escape}S{self.escape}"),
            (self.subcomponent, f"{self.escape}T{self.escape}"),
            (self.repetition, f"{self.escape}R{self.escape}"),
        )
        for char, replacement in pairs:
            text = text.replace(char, replacement)
        return " ".join(text.split())


STANDARD_ENCODING: Final = _Encoding("|", "^", "~", "\\", "&", None)
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass(frozen=True, slots=True)
class _Segment:
    name: str
    fields: list[str]
    raw: str

    def field(self, number: int) -> str:
        """Field ``number`` as in the standard (MSH-3 is ``field(3)``), raw; "" if absent."""
        index = number - 1 if self.name == "MSH" else number
        if self.name == "MSH" and number == 1:
            return self.raw[3:4]
        return self.fields[index] if 0 <= index < len(self.fields) else ""


class _Fields:
    """Accessors for repetitions, components and sub-components of raw field text."""

    def __init__(self, encoding: _Encoding) -> None:
        self.enc = encoding

    def repetitions(self, raw: str) -> list[str]:
        return raw.split(self.enc.repetition)

    def components(self, raw: str) -> list[str]:
        """Components of the first repetition, raw."""
        return self.repetitions(raw)[0].split(self.enc.component)

    def text(self, raw: str) -> str:
        """Unescaped, stripped text; the HL7 null ``""`` reads as empty."""
        value = self.enc.unescape(raw).strip()
        return "" if value == '""' else value

    def component(self, raw: str, number: int) -> str:
        """Component ``number`` (1-based) of the first repetition, unescaped; of a component with
        sub-components only the first (an HD inside a CX reads as its namespace id)."""
        comps = self.components(raw)
        if number > len(comps):
            return ""
        return self.text(comps[number - 1].split(self.enc.subcomponent)[0])

    def all_components(self, raw: str) -> tuple[str, ...]:
        comps = [self.text(c) for c in self.components(raw)]
        while comps and not comps[-1]:
            comps.pop()  # linear: slicing off one at a time was quadratic in the components
        return tuple(comps)


class _MessageError(Exception):
    """Internal: a whole-message rejection raised inside this module and caught by parse_oru."""

    def __init__(self, reason: RejectReason, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.rejection = Rejection.of(reason, message, field_name)


def _decode(raw: bytes | str) -> str:
    if isinstance(raw, str):
        text = raw
    else:
        data = raw.strip(b"\x0b\x1c\r\n\t ")
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        charset = _declared_charset(data)
        if charset == "8859/1":
            text = data.decode("latin-1")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if charset:
                    raise _MessageError(
                        RejectReason.MALFORMED_HL7,
                        f"not UTF-8 at byte {exc.start} although MSH-18 says {charset[:20]!r}",
                        "MSH-18",
                    ) from None
                # Undeclared and not UTF-8: a Latin-1 system (docs/feeds.md section 1). Every
                # byte is a character, so a stray byte spoils only the field it is in.
                text = data.decode("latin-1")
    return text.lstrip("\ufeff").strip("\x0b\x1c\r\n\t ")


def _declared_charset(data: bytes) -> str:
    first = re.split(rb"[\r\n]", data, maxsplit=1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return ""
    parts = first.split(first[3:4])
    return parts[17].decode("latin-1").strip().upper() if len(parts) > 17 else ""


def _encoding(msh: str) -> _Encoding:
    if len(msh) < 8:
        raise _MessageError(RejectReason.MALFORMED_HL7, "MSH segment too short", "MSH-2")
    sep = msh[3]
    end = msh.find(sep, 4)
    chars = msh[4:end] if end != -1 else msh[4:]
    if (
        sep.isalnum()
        or sep.isspace()
        or len(chars) not in (4, 5)
        or len(set(chars + sep)) != len(chars) + 1
        or any(c.isalnum() or c.isspace() for c in chars)
    ):
        raise _MessageError(
            RejectReason.MALFORMED_HL7,
            f"MSH-1/MSH-2 separators {msh[3:8]!r} are not valid encoding characters",
            "MSH-2",
        )
    return _Encoding(
        field=sep,
        component=chars[0],
        repetition=chars[1],
        escape=chars[2],
        subcomponent=chars[3],
        truncation=chars[4] if len(chars) == 5 else None,
    )


def _segments(text: str) -> tuple[_Encoding, list[_Segment]]:
    if not text.startswith("MSH"):
        raise _MessageError(RejectReason.MALFORMED_HL7, "not an HL7 v2 message (no MSH first)")
    lines = [line.lstrip(" \t") for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    encoding = _encoding(lines[0])
    segments = []
    for number, line in enumerate(lines, start=1):
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != encoding.field):
            raise _MessageError(
                RejectReason.MALFORMED_HL7, f"line {number} is not an HL7 segment: {line[:20]!r}"
            )
        if name == "MSH" and number > 1:
            raise _MessageError(RejectReason.MALFORMED_HL7, "more than one message (second MSH)")
        segments.append(_Segment(name, line.split(encoding.field), line))
    return encoding, segments


# --- timestamps ---------------------------------------------------------------------------------

_DTM = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


@dataclass(frozen=True, slots=True)
class _TimeError:
    reason: RejectReason
    message: str
    field_name: str | None = None


def dtm_offset(text: str) -> tzinfo | None:
    """The UTC offset a DTM carries (MSH-7: the zone of the message's local times), if any."""
    match = _DTM.match(text.strip())
    if match is None or match.group(8) is None:
        return None
    offset = match.group(8)
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 23 or minutes >= 60:
        return None
    return timezone((-1 if offset[0] == "-" else 1) * timedelta(hours=hours, minutes=minutes))


def parse_dtm(text: str, local_tz: tzinfo) -> datetime | _TimeError:
    """HL7 DTM/TS → aware datetime (see the module docstring for the rules)."""
    match = _DTM.match(text.strip())
    if match is None:
        return _TimeError(RejectReason.INVALID_TIMESTAMP, f"{text!r} is not an HL7 date/time")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if month is None or day is None:
        return _TimeError(RejectReason.INVALID_TIMESTAMP, f"{text!r} is not precise to the day")
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=UTC,  # placeholder: validates the fields; the zone is decided below
        )
        zone = local_tz
        if offset is not None:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[3:5])
            if minutes >= 60:
                raise ValueError("offset minutes")
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    except ValueError:
        return _TimeError(RejectReason.INVALID_TIMESTAMP, f"{text!r} is not a valid date/time")
    return moment.replace(tzinfo=zone)


# --- values -------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^(<=|>=|<>|<|>|=)? ?([+-]?(?:\d+(?:\.\d*)?|\.\d+))$")
#: Comparators of a censored value (docs/clinical-spec.md §0); "" and "=" mean exact.
_CENSORED: Final[dict[str, Comparator]] = {c.value: c for c in Comparator}
_STATUS: Final[dict[str, ResultStatus]] = {
    "F": ResultStatus.FINAL,
    "B": ResultStatus.FINAL,
    "U": ResultStatus.FINAL,
    "C": ResultStatus.CORRECTED,
    "A": ResultStatus.CORRECTED,
    "P": ResultStatus.PRELIMINARY,
    "S": ResultStatus.PRELIMINARY,
    "X": ResultStatus.CANCELLED,
    "D": ResultStatus.CANCELLED,
    "W": ResultStatus.CANCELLED,
}
_NOT_A_RESULT: Final[dict[str, str]] = {
    "I": "pending (specimen in lab, no result yet)",
    "O": "order detail only, no result",
    "N": "not asked",
    "R": "entered but not verified",
}
_TEXT_TYPES: Final = frozenset({"ST", "TX", "FT", ""})
_CODED_TYPES: Final = frozenset({"CWE", "CE", "CNE", "CF"})
#: HL7 table 0396 names (and the OID) of SNOMED CT.
_SNOMED_SYSTEMS: Final = frozenset(
    {"SCT", "SNM", "SNM3", "SNOMED", "SNOMEDCT", "2.16.840.1.113883.6.96"}
)


@dataclass(frozen=True, slots=True)
class _Value:
    value: float | None = None
    detected: bool | None = None
    sensitivity: float | None = None
    comparator: Comparator | None = None


class _ValueError(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _number(text: str, comparator: str = "") -> _Value | None:
    """A number, optionally censored (``<0.1``), from NM-like text; ``None`` if it is not one.

    ``comparator`` is SN's first component (then ``text`` must not carry its own).
    """
    match = _NUMBER.match(text.strip())
    if match is None or (comparator and match.group(1)):
        return None
    sign = comparator or match.group(1) or ""
    if sign == "<>":
        raise _ValueError(
            RejectReason.INVALID_FIELD, f"value {sign}{match.group(2)} (not equal) is not one value"
        )
    return _Value(value=float(match.group(2)), comparator=_CENSORED.get(sign))


# --- the parser ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    patient_id: str
    source: str | None
    control_id: str | None
    #: zone of timestamps without an offset: MSH-7's offset, else the feed's, else the policy's
    zone: tzinfo
    obr: _Segment | None = None
    #: SPM-17 of the current OBR group (its SPM follows the group's OBX segments)
    specimen_time: str = ""


def parse_oru(raw: bytes | str, config: Hl7Config, policy: Policy = DEFAULT_POLICY) -> Hl7Message:
    """Parse one HL7 v2 ORU^R01 message. Never raises: every failure is a ``Rejection``."""
    try:
        return _parse(raw, config, policy)
    except _MessageError as exc:
        return Hl7Message(control_id=None, message_rejection=exc.rejection)
    except Exception as exc:  # last-resort guard: the MLLP listener must always answer
        return Hl7Message(
            control_id=None,
            message_rejection=Rejection.of(
                RejectReason.MALFORMED_HL7, f"{PARSER_BUG}: {type(exc).__name__}"
            ),
        )


def _parse(raw: bytes | str, config: Hl7Config, policy: Policy) -> Hl7Message:
    text = _decode(raw)
    encoding, segments = _segments(text)
    fields = _Fields(encoding)
    msh = segments[0]
    header = Hl7Header(
        sending_application=fields.all_components(msh.field(3)),
        sending_facility=fields.all_components(msh.field(4)),
        receiving_application=fields.all_components(msh.field(5)),
        receiving_facility=fields.all_components(msh.field(6)),
        message_type=fields.all_components(msh.field(9)),
        control_id=fields.text(msh.field(10)) or None,
        processing_id=fields.component(msh.field(11), 1) or None,
        version=fields.component(msh.field(12), 1) or None,
    )
    control_id = header.control_id

    def reject(reason: RejectReason, message: str, field_name: str) -> Hl7Message:
        return Hl7Message(control_id, Rejection.of(reason, message, field_name), [], header)

    if not header.message_type:
        return reject(RejectReason.MALFORMED_HL7, "MSH-9 (message type) is empty", "MSH-9")
    kind = tuple(part.upper() for part in header.message_type[:2])
    if kind != ("ORU", "R01"):
        shown = "^".join(header.message_type)
        return reject(
            RejectReason.UNSUPPORTED_MESSAGE, f"message type {shown} is not ORU^R01", "MSH-9"
        )
    pids = [segment for segment in segments if segment.name == "PID"]
    if not pids:
        return reject(RejectReason.MISSING_PATIENT_ID, "no PID segment", "PID-3")
    for pid in pids:
        if _patient_id(pid, fields, config.assigning_authority) is None:
            wanted = (
                f" from assigning authority {config.assigning_authority!r}"
                if config.assigning_authority
                else ""
            )
            return reject(
                RejectReason.MISSING_PATIENT_ID, f"PID-3 has no patient identifier{wanted}", "PID-3"
            )

    source = (
        config.source
        or fields.component(msh.field(4), 1)
        or fields.component(msh.field(4), 2)
        or fields.component(msh.field(3), 1)
        or fields.component(msh.field(3), 2)
        or None
    )
    zone = dtm_offset(fields.component(msh.field(7), 1)) or config.zone(policy)
    items: list[ResultItem] = []
    context: _Context | None = None
    obx_number = 0
    specimen_times = _specimen_times(segments, fields)
    for index, segment in enumerate(segments):
        if segment.name == "PID":
            patient_id = _patient_id(segment, fields, config.assigning_authority)
            assert patient_id is not None  # checked above
            context = _Context(patient_id, source, control_id, zone)
        elif segment.name == "OBR" and context is not None:
            context.obr = segment
            context.specimen_time = specimen_times.get(index, "")
        elif segment.name == "OBX":
            obx_number += 1
            location = f"OBX {obx_number}"
            if context is None:
                outcome: LabResult | Rejection | Unmapped = Rejection.of(
                    RejectReason.MALFORMED_HL7, "OBX before any PID segment", "PID"
                )
                claimed = None
            else:
                outcome, claimed = _observation(segment, context, fields, config, policy)
            items.append(result_item(location, segment.raw, outcome, claimed))
    return Hl7Message(control_id, None, items, header)


def _specimen_times(segments: list[_Segment], fields: _Fields) -> dict[int, str]:
    """SPM-17 (specimen collection time, DR: its start) of each OBR group, keyed by the OBR's
    position: in ORU^R01 the SPECIMEN group comes after the group's OBX segments."""
    times: dict[int, str] = {}
    obr_at: int | None = None
    for index, segment in enumerate(segments):
        if segment.name in ("OBR", "PID"):
            obr_at = index if segment.name == "OBR" else None
        elif segment.name == "SPM" and obr_at is not None:
            text = fields.component(segment.field(17), 1)
            if text:
                times.setdefault(obr_at, text)
    return times


def _patient_id(pid: _Segment, fields: _Fields, authority: str | None) -> str | None:
    for repetition in fields.repetitions(pid.field(3)):
        comps = repetition.split(fields.enc.component)
        identifier = fields.text(comps[0].split(fields.enc.subcomponent)[0])
        if not identifier:
            continue
        if authority is None:
            return identifier
        if len(comps) > 3:
            assigning = [fields.text(s) for s in comps[3].split(fields.enc.subcomponent)]
            if authority in assigning[:2]:
                return identifier
    return None


@dataclass(frozen=True, slots=True)
class _Code:
    analyte: Analyte
    loinc: str | None
    local: str | None


def _identify(obx: _Segment, fields: _Fields, config: Hl7Config) -> _Code | Rejection | Unmapped:
    """OBX-3 → analyte (see "Test codes" in the module docstring)."""
    comps = fields.components(obx.field(3))

    def part(number: int) -> str:
        return fields.text(comps[number - 1]) if number <= len(comps) else ""

    sent = [
        SentCode(code, is_loinc_system(system), (code,))
        for code, system in ((part(1), part(3)), (part(4), part(6)))
        if code
    ]
    if not sent:
        return Rejection.of(RejectReason.MISSING_FIELD, "OBX-3 carries no test code", "OBX-3")
    match = resolve_codes(sent, config.local_codes)
    if match.conflict is not None:
        return Rejection.of(RejectReason.INVALID_FIELD, match.conflict, "OBX-3")
    if match.analyte is not None:
        return _Code(match.analyte, match.loinc, match.local)
    if match.loinc is not None:
        return Unmapped(match.loinc, f"LOINC {match.loinc} is not one of our analytes")
    system = part(3) if part(1) else part(6)
    return Unmapped(
        sent[0].code,
        f"code {sent[0].code} (coding system {system!r}) is not LOINC-coded and not in local_codes",
    )


def _observation(
    obx: _Segment, context: _Context, fields: _Fields, config: Hl7Config, policy: Policy
) -> tuple[LabResult | Rejection | Unmapped, Analyte | None]:
    """The OBX's outcome and the analyte its code names (which a CD19 unit may overrule)."""
    code = _identify(obx, fields, config)
    if isinstance(code, Rejection):
        return Rejection(code.details, context.patient_id), None
    if isinstance(code, Unmapped):
        return code, None
    return _coded_observation(obx, code, context, fields, config, policy), code.analyte


def _coded_observation(
    obx: _Segment,
    code: _Code,
    context: _Context,
    fields: _Fields,
    config: Hl7Config,
    policy: Policy,
) -> LabResult | Rejection | Unmapped:
    patient_id = context.patient_id

    def reject(reason: RejectReason, message: str, field_name: str) -> Rejection:
        return Rejection.of(reason, message, field_name, patient_id)

    obr = context.obr
    status_code = fields.component(obx.field(11), 1).upper()
    status_field = "OBX-11"
    if not status_code and obr is not None:
        status_code = fields.component(obr.field(25), 1).upper()
        status_field = "OBR-25"
    if status_code in _NOT_A_RESULT:
        return Unmapped(
            code.loinc or code.local,
            f"{status_field} {status_code}: {_NOT_A_RESULT[status_code]}, not a result",
        )
    if not status_code:
        return reject(RejectReason.MISSING_FIELD, "no result status", "OBX-11")
    status = _STATUS.get(status_code)
    if status is None:
        return reject(
            RejectReason.UNKNOWN_VOCABULARY,
            f"result status {status_code!r} is not in HL7 table 0085",
            status_field,
        )

    times = _times(obx, context, fields)
    if isinstance(times, _TimeError):
        return reject(times.reason, times.message, times.field_name or "OBX-14")

    cancelled = status is ResultStatus.CANCELLED
    try:
        value = _value(obx, fields, code.analyte)
    except _ValueError as exc:
        if not cancelled:
            return reject(exc.reason, exc.message, "OBX-5")
        value = _Value()
    if status_code == "U" and value.value is None and value.detected is None:
        return reject(
            RejectReason.MISSING_VALUE,
            "OBX-11 U (status change to final) without a value: resend the result as F",
            "OBX-5",
        )

    method = None
    if code.analyte is Analyte.MRD:
        method = config.mrd_methods.get(code.local or "") or mrd_method_from_text(
            " ".join(fields.all_components(obx.field(17)))
        )
    unit = fields.component(obx.field(6), 1) or None
    accession = None
    if obr is not None:
        accession = fields.component(obr.field(3), 1) or fields.component(obr.field(2), 1)
    record: dict[str, Any] = {
        "type": "lab_result",
        "patient_id": patient_id,
        "analyte": code.analyte,
        "value": value.value,
        "comparator": value.comparator,
        "unit": unit,
        "collected_at": times["collected_at"],
        "resulted_at": times["resulted_at"],
        "status": status,
        "accession": accession or context.control_id,
        "source": context.source,
        "loinc": code.loinc,
        "method": method,
        "detected": value.detected,
        "sensitivity": value.sensitivity,
    }
    return lab_result_from_fields(record, policy, _WIRE_TO_HL7, patient_id)


_WIRE_TO_HL7: Final = {
    "value": "OBX-5",
    "comparator": "OBX-5",
    "unit": "OBX-6",
    "status": "OBX-11",
    "collected_at": "OBX-14",
    "resulted_at": "OBX-19",
    "sensitivity": "OBX-5",
    "patient_id": "PID-3",
    "loinc": "OBX-3",
    "detected": "OBX-5",
    "accession": "OBR-3",
}


def _times(
    obx: _Segment, context: _Context, fields: _Fields
) -> dict[str, datetime | None] | _TimeError:
    """Result time (OBX-19, else OBR-22) and collection time (OBX-14, else OBR-7, else SPM-17:
    required); the first valued source of each is read and must be valid. A collection time
    later than the result time is none (some vendors put the verification time in OBX-14): then
    the next source not later than the result time is read, if there is one."""
    obr = context.obr

    def obr_text(number: int) -> str:
        return fields.component(obr.field(number), 1) if obr is not None else ""

    def read(source: tuple[str, str]) -> datetime | _TimeError:
        moment = parse_dtm(source[1], context.zone)
        if isinstance(moment, _TimeError):
            return _TimeError(moment.reason, moment.message, source[0])
        return moment

    analysis = ("OBX-19", fields.component(obx.field(19), 1))
    resulted = next((read(s) for s in (analysis, ("OBR-22", obr_text(22))) if s[1]), None)
    if isinstance(resulted, _TimeError):
        return resulted
    sources = [
        (name, text)
        for name, text in (
            ("OBX-14", fields.component(obx.field(14), 1)),
            ("OBR-7", obr_text(7)),
            ("SPM-17", context.specimen_time),
        )
        if text
    ]
    if not sources:
        return _TimeError(
            RejectReason.MISSING_FIELD, "no specimen collection time (OBX-14, OBR-7 or SPM-17)"
        )
    collected = read(sources[0])
    if isinstance(collected, _TimeError):
        return collected
    if resulted is not None and collected > resulted:
        others = (read(source) for source in sources[1:])
        collected = next(
            (m for m in others if isinstance(m, datetime) and m <= resulted), collected
        )
    return {"collected_at": collected, "resulted_at": resulted}


def _value(obx: _Segment, fields: _Fields, analyte: Analyte) -> _Value:
    """OBX-5 read by OBX-2; raises ``_ValueError`` for what cannot be accepted."""
    value_type = fields.component(obx.field(2), 1).upper()
    repetitions = [r for r in fields.repetitions(obx.field(5)) if fields.text(r)]
    if not repetitions:
        return _Value()
    if len(repetitions) > 1:
        raise _ValueError(RejectReason.INVALID_FIELD, "OBX-5 repeats: one value per OBX")
    raw = repetitions[0]
    if value_type == "NM":
        text = fields.text(raw)
        number = _number(text)
        if number is None:
            raise _ValueError(RejectReason.INVALID_VALUE, f"NM value {text[:60]!r} is not a number")
        return number
    if value_type == "SN":
        return _structured_numeric(raw, fields, analyte)
    if value_type in _TEXT_TYPES:
        text = fields.text(raw)
        number = _number(text)
        if number is not None:
            return number
        return _qualitative(text, analyte)
    if value_type in _CODED_TYPES and analyte is Analyte.MRD:
        comps = [fields.text(c) for c in raw.split(fields.enc.component)]
        for code_index, system_index in ((0, 2), (3, 5)):
            code = comps[code_index] if code_index < len(comps) else ""
            system = comps[system_index].upper() if system_index < len(comps) else ""
            if code in SNOMED_FINDINGS and system in _SNOMED_SYSTEMS:
                return _Value(detected=SNOMED_FINDINGS[code])
        text = " ".join(c for i, c in enumerate(comps) if i in (1, 4, 8) and c)
        return _qualitative(text, analyte)
    raise _ValueError(
        RejectReason.INVALID_FIELD,
        f"value type {value_type or '(empty)'} is not accepted for {analyte.value}",
    )


def _structured_numeric(raw: str, fields: _Fields, analyte: Analyte) -> _Value:
    comps = [fields.text(c) for c in raw.split(fields.enc.component)]
    comps += [""] * (4 - len(comps))
    comparator, first, separator, second = comps[:4]
    if separator or second or any(comps[4:]):
        raise _ValueError(
            RejectReason.INVALID_FIELD,
            f"SN value {fields.text(raw)!r} is a range or ratio, not one number",
        )
    if comparator not in {"", "=", "<", ">", "<=", ">=", "<>"}:
        raise _ValueError(
            RejectReason.INVALID_FIELD, f"SN comparator {comparator[:20]!r} is not valid"
        )
    number = _number(first, comparator)
    if number is None:
        raise _ValueError(RejectReason.INVALID_VALUE, f"SN value {first[:60]!r} is not a number")
    return number


def _qualitative(text: str, analyte: Analyte) -> _Value:
    if analyte is not Analyte.MRD:
        raise _ValueError(
            RejectReason.INVALID_FIELD,
            f"{analyte.value} needs a number, got text {text[:60]!r}",
        )
    finding = mrd_from_text(text)
    if finding is None:
        raise _ValueError(
            RejectReason.INVALID_FIELD,
            f"MRD text {text[:60]!r} states neither detected nor not detected unambiguously",
        )
    return _Value(detected=finding.detected, sensitivity=finding.sensitivity)


# --- acknowledgments ----------------------------------------------------------------------------

AckCode = Literal["AA", "AE", "AR"]

#: HL7 table 0357 (message error condition codes) for the ERR segment.
ERROR_CODES: Final[dict[RejectReason, str]] = {
    RejectReason.MALFORMED_HL7: "102",
    RejectReason.UNSUPPORTED_MESSAGE: "200",
    RejectReason.MISSING_PATIENT_ID: "101",
    RejectReason.MISSING_FIELD: "101",
    RejectReason.MISSING_VALUE: "101",
    RejectReason.INVALID_TIMESTAMP: "102",
    RejectReason.NAIVE_DATETIME: "102",
    RejectReason.INVALID_FIELD: "102",
    RejectReason.NEGATIVE_VALUE: "102",
    RejectReason.UNKNOWN_UNIT: "103",
    RejectReason.UNKNOWN_VOCABULARY: "103",
    RejectReason.UNKNOWN_ANALYTE: "103",
}
_ERROR_TEXT: Final = {
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "207": "Application internal error",
}


def error_code_for(reason: RejectReason) -> str:
    """HL7 table 0357 code for a reject reason (207 "application internal error" otherwise)."""
    return ERROR_CODES.get(reason, "207")


def build_ack(
    message_control_id: str | None,
    code: AckCode,
    text: str | None = None,
    *,
    now: datetime,
    header: Hl7Header | None = None,
    ack_control_id: str | None = None,
    error_code: str | None = None,
    application: str = "CARWATCH",
    facility: str = "",
) -> str:
    """An HL7 v2 ACK (original acknowledgment mode) for MLLP, segments ended by ``\\r``.

    ``AA`` only once the results are durably in Kafka; ``AE`` for an application error (the
    message or some of its results went to the dead-letter topic: do not resend unchanged);
    ``AR`` when the message could not be processed at all (not HL7, or the broker is
    unreachable: the sender must retry). ``text`` goes to MSA-3 and, for AE/AR, to an ERR
    segment (ERR-3 = ``error_code``, HL7 table 0357, default 207; ERR-4 severity E; ERR-8).
    ``now`` is the ACK's MSH-7 (aware); ``ack_control_id`` its MSH-10 (default: derived from
    ``now`` and the acknowledged id).
    """
    enc = STANDARD_ENCODING
    if now.tzinfo is None:
        raise ValueError("build_ack needs an aware 'now'")

    def hd(parts: tuple[str, ...]) -> str:
        return enc.component.join(enc.escape_text(p) for p in parts)

    acked = message_control_id or ""
    their_app = header.sending_application if header else ()
    their_facility = header.sending_facility if header else ()
    trigger = header.message_type[1] if header and len(header.message_type) > 1 else "R01"
    processing = (header.processing_id if header else None) or "P"
    version = (header.version if header else None) or "2.5.1"
    stamp = now.strftime("%Y%m%d%H%M%S") + now.strftime("%z")
    control = ack_control_id or f"ACK{now.strftime('%Y%m%d%H%M%S%f')}{acked}"[:199]
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            enc.escape_text(application),
            enc.escape_text(facility),
            hd(their_app),
            hd(their_facility),
            stamp,
            "",
            f"ACK^{enc.escape_text(trigger)}^ACK",
            enc.escape_text(control),
            enc.escape_text(processing),
            enc.escape_text(version),
        ]
    )
    message = enc.escape_text(text or "")
    segments = [msh, "|".join(["MSA", code, enc.escape_text(acked), message])]
    if code != "AA":
        err_code = error_code or "207"
        err_text = _ERROR_TEXT.get(err_code, "")
        segments.append(
            "|".join(["ERR", "", "", f"{err_code}^{err_text}^HL70357", "E", "", "", "", message])
        )
    return "\r".join(segments) + "\r"
