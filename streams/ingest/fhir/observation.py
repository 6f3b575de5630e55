"""FHIR R4 Observation and Bundle → one outcome per result.

Standard: HL7 FHIR R4 (4.0.1), resources Observation and Bundle, validated with the
``fhir.resources.R4B`` models (R4B shares R4's Observation and Bundle structure; the package's
default models are R5). UCUM for units (``http://unitsofmeasure.org``), LOINC for test codes
(``http://loinc.org``). docs/feeds.md is the interface engineer's view of the same rules.

What is read, per Observation:

- ``code.coding`` with system ``http://loinc.org`` (our LOINC table), else any coding listed in
  ``FhirConfig.local_codes`` (keyed ``system|code`` or bare ``code``); a LOINC coding and a local
  coding that disagree → ``invalid_field``; a ``code`` that is not a CodeableConcept →
  ``malformed_fhir`` (it cannot be read, so it cannot be called "not ours").
- ``subject``: ``Patient/123`` (relative or absolute, ``_history`` ignored) → ``123``; a
  logical reference (``subject.identifier``) → its value; ``urn:uuid:…`` (transaction bundles)
  → the Patient resource of that ``fullUrl`` in the Bundle and its first identifier (or the one
  whose system is ``FhirConfig.patient_identifier_system``), else the uuid; ``#id`` → the
  contained Patient's identifier. Anything else → ``missing_patient_id``.
- collection time: ``effectiveDateTime``, ``effectivePeriod.start`` or ``effectiveInstant`` —
  never ``issued``. A member of a panel (listed in another Observation's ``hasMember`` in the
  same Bundle) without its own effective time takes the panel's: the panel and its members are
  one specimen (the FHIR R4 specification's own CBC example works this way). Otherwise missing →
  ``missing_field``. ``issued`` → ``resulted_at``.
- value: ``valueQuantity`` — the UCUM ``code`` when ``system`` is UCUM; the human ``unit`` text
  when there is no coded unit (the HL7 spec's own examples send only ``unit``); either goes
  through the same unit whitelist (``streams.ingest.units``). A unit coded in another system
  (SNOMED CT ``258814008``) is ``unknown_unit``: we cannot read that code and will not trust
  its display text instead. A ``comparator`` (``<``, ``<=``, ``>=``, ``>``) is a censored value,
  accepted with the limit as value and the comparator kept (docs/clinical-spec.md §0); R4's ``ad``
  ("sufficient to achieve") is no limit → ``invalid_field``. A value that is not a JSON number
  (``"250"``, ``true``) → ``invalid_value``, never coerced — also where the R4 model would call
  it malformed; a number beyond a double (``1e999``) → ``implausible_value``. ``valueString`` and
  ``valueCodeableConcept`` (SNOMED CT detected/not detected/positive/negative, else text) and
  ``valueBoolean`` carry qualitative MRD; ``valueInteger`` is a number without a unit (so
  ``unknown_unit``); other value types → ``invalid_field``. MRD ``method`` from
  ``FhirConfig.mrd_methods`` or the Observation's ``method`` text.
- An Observation without a value but with ``component``s (a panel in one resource): each
  component with a mapped code becomes a result of its own (location ``entry 3 component 1``)
  with the parent's subject, times, status and identifier; if none maps, the Observation is
  ``Unmapped`` (or, when its own code maps, handled as that result).
- ``status``: ``final`` → final; ``amended``/``corrected`` → corrected; ``preliminary`` →
  preliminary; ``cancelled``/``entered-in-error`` → cancelled; ``registered`` (no result yet)
  → ``Unmapped``, like HL7's pending ``I``; ``unknown`` → ``invalid_field`` (a value whose
  status its sender does not know cannot be acted on, and must not vanish silently).
- ``accession`` = ``identifier[0].value``, else the ``accessionIdentifier`` of the Specimen
  that ``specimen`` references (in the Bundle or contained), else the resource id; ``source`` =
  ``FhirConfig.source``, else ``meta.source``, else the first performer's display or reference.
- Timestamps (docs/clinical-spec.md §0 "Time zones of feeds", rev. 2): FHIR requires an offset on every
  time; a date-time with a time but without one is invalid FHIR and rejected
  ``naive_datetime``. A date alone (``2005-07-05``, US Core's examples) is the start of that day
  in the policy's ``timezone``. Less than a day (``2005-07``), a time without seconds (FHIR's
  grammar requires them) or impossible values → ``invalid_timestamp``.
- Hostile input: the body is read by ``streams.ingest.jsonsafe`` (bounded nesting, no lone
  surrogates, strict UTF-8); references are split, not matched with a regular expression (the
  first release's pattern backtracked for minutes on a 1 MB ``subject.reference``).

Documents: an Observation, or a Bundle of type ``collection``, ``batch``, ``transaction`` or
``searchset`` (entries are processed one by one, also in a transaction: each result is checked
on its own). Non-Observation entries are ignored (Patients only serve to resolve references).
Unparseable JSON, another resource type, another Bundle type → ``document_rejection``.
Locations: ``entry i`` is ``Bundle.entry[i]`` (0-based, as in FHIRPath); a lone Observation is
``Observation``.
"""

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Final

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Analyte, Comparator, RejectReason, ResultStatus
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.ingest.config import FeedConfig
from streams.ingest.jsonsafe import load_json
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

FhirItem = ResultItem

UCUM: Final = "http://unitsofmeasure.org"
SNOMED: Final = "http://snomed.info/sct"
BUNDLE_TYPES: Final = frozenset({"collection", "batch", "transaction", "searchset"})
#: Message text of the last-resort guard: a parser bug, reported as a rejection (never raised).
PARSER_BUG: Final = "unexpected parser failure (a bug in carwatch, please report)"

_STATUS: Final[dict[str, ResultStatus]] = {
    "preliminary": ResultStatus.PRELIMINARY,
    "final": ResultStatus.FINAL,
    "amended": ResultStatus.CORRECTED,
    "corrected": ResultStatus.CORRECTED,
    "cancelled": ResultStatus.CANCELLED,
    "entered-in-error": ResultStatus.CANCELLED,
}
_CENSORED: Final[dict[str, Comparator]] = {c.value: c for c in Comparator}
_TIME_FIELDS: Final = frozenset(
    {"effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"}
)


class FhirConfig(FeedConfig):
    """Settings of a FHIR endpoint: ``patient_identifier_system`` picks the Patient identifier
    used as patient id (see the module docstring); the rest as ``FeedConfig``."""

    patient_identifier_system: str | None = None


DEFAULT_FHIR_CONFIG: Final = FhirConfig()


@dataclass(frozen=True, slots=True)
class FhirParse:
    """One parsed document: either ``document_rejection`` or one item per result."""

    document_rejection: Rejection | None
    items: list[ResultItem] = field(default_factory=list)
    resource_type: str | None = None


class _DocumentError(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection.of(reason, message)


class _Reject(Exception):
    """Internal: one result is rejected (caught per result)."""

    def __init__(self, reason: RejectReason, message: str, field_name: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field_name = field_name


def parse_fhir(
    raw: bytes | str | dict[str, Any],
    config: FhirConfig = DEFAULT_FHIR_CONFIG,
    policy: Policy = DEFAULT_POLICY,
) -> FhirParse:
    """Parse one FHIR R4 document (Observation or Bundle). Never raises."""
    try:
        return _parse(raw, config, policy)
    except _DocumentError as exc:
        return FhirParse(exc.rejection)
    except Exception as exc:  # last-resort guard: the endpoint must always answer
        return FhirParse(
            Rejection.of(RejectReason.MALFORMED_FHIR, f"{PARSER_BUG}: {type(exc).__name__}")
        )


def _load(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        document = load_json(raw)
    except ValueError as exc:
        raise _DocumentError(RejectReason.MALFORMED_FHIR, str(exc)[:300]) from None
    if not isinstance(document, dict):
        raise _DocumentError(RejectReason.MALFORMED_FHIR, "a FHIR resource is a JSON object")
    return document


@dataclass(frozen=True, slots=True)
class _Entry:
    location: str
    resource: dict[str, Any]
    full_url: str | None


def _parse(raw: bytes | str | dict[str, Any], config: FhirConfig, policy: Policy) -> FhirParse:
    document = _load(raw)
    resource_type = document.get("resourceType")
    if resource_type == "Observation":
        entries = [_Entry("Observation", document, None)]
    elif resource_type == "Bundle":
        entries = _bundle_entries(document)
    elif isinstance(resource_type, str):
        raise _DocumentError(
            RejectReason.UNSUPPORTED_MESSAGE,
            f"resourceType {resource_type[:40]!r} is neither Observation nor Bundle",
        )
    else:
        raise _DocumentError(RejectReason.MALFORMED_FHIR, "no resourceType")
    bundle = _BundleIndex(entries)
    items: list[ResultItem] = []
    for entry in entries:
        if entry.resource.get("resourceType") == "Observation":
            items.extend(_observation(entry, bundle, config, policy))
    return FhirParse(None, items, resource_type)


def _bundle_entries(document: dict[str, Any]) -> list[_Entry]:
    bundle_type = document.get("type")
    entries = document.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _DocumentError(RejectReason.MALFORMED_FHIR, "Bundle.entry is not a list of objects")
    shell = {
        **document,
        "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries],
    }
    try:
        Bundle.model_validate(shell)
    except ValidationError as exc:
        raise _DocumentError(
            RejectReason.MALFORMED_FHIR, f"invalid Bundle: {_first(exc)}"
        ) from None
    if bundle_type not in BUNDLE_TYPES:
        raise _DocumentError(
            RejectReason.UNSUPPORTED_MESSAGE,
            f"Bundle type {bundle_type!r} is not one of {', '.join(sorted(BUNDLE_TYPES))}",
        )
    result = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
            result.append(_Entry(f"entry {index}", resource, full_url))
    return result


def _first(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}"[:300]


_RESOURCE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RESOURCE_TYPE = re.compile(r"^[A-Za-z]{1,64}$")
#: Longest reference read; FHIR ids are at most 64 characters, URLs before them rarely 1 KB.
MAX_REFERENCE_CHARS: Final = 2048


def reference_tail(reference: str) -> str | None:
    """``Type/id`` of a relative or absolute reference (``_history`` ignored), else ``None``.

    Split on ``/`` from the right — linear — where the first release's regular expression
    ``[A-Za-z]+/…$`` searched every start position (quadratic: minutes for 1 MB).
    """
    if len(reference) > MAX_REFERENCE_CHARS:
        return None
    parts = reference.rstrip("/").rsplit("/", 4)
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    kind, ident = parts[-2], parts[-1]
    if _RESOURCE_TYPE.match(kind) is None or _RESOURCE_ID.match(ident) is None:
        return None
    return f"{kind}/{ident}"


def _reference_key(reference: str) -> str:
    if reference.startswith("urn:"):
        return reference
    return reference_tail(reference) or reference


class _BundleIndex:
    """Resources by reference, and the effective time panels lend their members."""

    def __init__(self, entries: list[_Entry]) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        for entry in entries:
            for key in self._keys(entry):
                self.resources.setdefault(key, entry.resource)
        self.panel_time: dict[str, Any] = {}
        for entry in entries:
            resource = entry.resource
            members = resource.get("hasMember")
            effective = _effective_raw(resource)
            if resource.get("resourceType") != "Observation" or effective is None:
                continue
            if not isinstance(members, list):
                continue
            for member in members:
                reference = member.get("reference") if isinstance(member, dict) else None
                if isinstance(reference, str):
                    self.panel_time.setdefault(_reference_key(reference), effective)

    @staticmethod
    def _keys(entry: _Entry) -> set[str]:
        keys = set()
        resource_type, resource_id = entry.resource.get("resourceType"), entry.resource.get("id")
        if isinstance(resource_type, str) and isinstance(resource_id, str):
            keys.add(f"{resource_type}/{resource_id}")
        if entry.full_url:
            keys.add(_reference_key(entry.full_url))
        return keys

    def resolve(self, reference: str) -> dict[str, Any] | None:
        return self.resources.get(_reference_key(reference))

    def inherited_time(self, entry: _Entry) -> Any:
        for key in self._keys(entry):
            if key in self.panel_time:
                return self.panel_time[key]
        return None


def _effective_raw(resource: dict[str, Any]) -> Any:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if resource.get(key) is not None:
            return resource[key]
    period = resource.get("effectivePeriod")
    if isinstance(period, dict) and period.get("start") is not None:
        return period["start"]
    return None


# --- timestamps ---------------------------------------------------------------------------------

_FHIR_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def parse_fhir_datetime(text: Any, day_zone: tzinfo) -> datetime:
    """FHIR ``dateTime``/``instant`` → aware datetime; raises ``_Reject`` (see module docs)."""
    if not isinstance(text, str):
        raise _Reject(RejectReason.INVALID_TIMESTAMP, f"{text!r} is not a FHIR dateTime", None)
    match = _FHIR_DATETIME.match(text.strip()) if len(text) <= 64 else None
    if match is None:
        raise _Reject(RejectReason.INVALID_TIMESTAMP, f"{text!r} is not a FHIR dateTime", None)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if month is None or day is None:
        raise _Reject(RejectReason.INVALID_TIMESTAMP, f"{text!r} is not precise to the day", None)
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=UTC,  # placeholder: validates the fields; the zone is decided below
        )
        zone: tzinfo | None = None
        if offset == "Z":
            zone = UTC
        elif offset is not None:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if minutes >= 60:
                raise ValueError("offset minutes")
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    except ValueError:
        raise _Reject(
            RejectReason.INVALID_TIMESTAMP, f"{text!r} is not a valid date/time", None
        ) from None
    if zone is None and hour is not None:
        raise _Reject(RejectReason.NAIVE_DATETIME, f"{text!r} has a time but no UTC offset", None)
    return moment.replace(tzinfo=zone or day_zone)


# --- one Observation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Code:
    analyte: Analyte | None
    loinc: str | None
    local: str | None
    shown: str | None


def _identify(code: Any, config: FhirConfig) -> _Code:
    """The analyte of a ``code``; a code that is not a CodeableConcept cannot be read, so it is
    rejected (``malformed_fhir``) rather than called "not ours" — ``"751-8"`` is an ANC."""
    if code is not None and not _is_codeable_concept(code):
        raise _Reject(RejectReason.MALFORMED_FHIR, "code is not a CodeableConcept", "code")
    listed = code.get("coding") if isinstance(code, dict) else None
    codings = [
        c
        for c in (listed if isinstance(listed, list) else [])
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]
    sent = [
        SentCode(
            c["code"],
            is_loinc_system(c.get("system")),
            (f"{c.get('system')}|{c['code']}", c["code"]),
        )
        for c in codings
    ]
    match = resolve_codes(sent, config.local_codes)
    if match.conflict is not None:
        raise _Reject(RejectReason.INVALID_FIELD, match.conflict, "code")
    shown = match.loinc or (sent[0].code if sent else None)
    return _Code(match.analyte, match.loinc, match.local, shown)


def _is_codeable_concept(code: Any) -> bool:
    """JSON types of a CodeableConcept as far as codes are read: an object whose ``coding`` is a
    list of objects with string ``system`` and ``code``."""
    if not isinstance(code, dict):
        return False
    codings = code.get("coding", [])
    return isinstance(codings, list) and all(
        isinstance(c, dict) and all(isinstance(c.get(k) or "", str) for k in ("system", "code"))
        for c in codings
    )


def _unmapped(code: _Code, code_text: Any) -> Unmapped:
    if code.loinc:
        return Unmapped(code.loinc, f"LOINC {code.loinc} is not one of our analytes")
    if code.shown:
        return Unmapped(code.shown, f"code {code.shown} is not LOINC-coded and not in local_codes")
    text = code_text.get("text") if isinstance(code_text, dict) else None
    return Unmapped(None, f"no coding (text {str(text)[:60]!r})")


def _observation(
    entry: _Entry, bundle: _BundleIndex, config: FhirConfig, policy: Policy
) -> list[ResultItem]:
    """Items of one Observation: unmapped ones are not validated further (not ours)."""
    resource = entry.resource
    raw = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
    try:
        patient_id: str | None = _patient_id(resource, bundle, config)
    except _Reject:
        patient_id = None
    try:
        top = _identify(resource.get("code"), config)
        mapped_components: list[tuple[int, dict[str, Any], _Code]] = []
        components = resource.get("component")
        if not any(key.startswith("value") for key in resource) and isinstance(components, list):
            for index, component in enumerate(components):
                if isinstance(component, dict):
                    comp_code = _identify(component.get("code"), config)
                    if comp_code.analyte is not None:
                        mapped_components.append((index, component, comp_code))
        if top.analyte is None and not mapped_components:
            return [ResultItem(entry.location, raw, _unmapped(top, resource.get("code")))]
        _validate(resource, policy.tz)
    except _Reject as exc:
        rejection = Rejection.of(exc.reason, exc.message, exc.field_name, patient_id)
        return [ResultItem(entry.location, raw, rejection)]
    if not mapped_components:
        outcome = _guarded(entry, resource, top, bundle, config, policy, patient_id)
        return [result_item(entry.location, raw, outcome, top.analyte)]
    return [
        result_item(
            f"{entry.location} component {index}",
            raw,
            _guarded(entry, component, code, bundle, config, policy, patient_id),
            code.analyte,
        )
        for index, component, code in mapped_components
    ]


def _guarded(
    entry: _Entry,
    holder: dict[str, Any],
    code: _Code,
    bundle: _BundleIndex,
    config: FhirConfig,
    policy: Policy,
    patient_id: str | None,
) -> LabResult | Rejection | Unmapped:
    try:
        return _result(entry, holder, code, bundle, config, policy)
    except _Reject as exc:
        return Rejection.of(exc.reason, exc.message, exc.field_name, patient_id)


def _validate(resource: dict[str, Any], day_zone: tzinfo) -> None:
    try:
        Observation.model_validate(resource)
    except ValidationError as exc:
        details = []
        for error in exc.errors(include_url=False):
            if _is_quantity_value(error["loc"]):
                continue  # read by _quantity and the wire model, with their own reasons
            where = ".".join(str(part) for part in error["loc"]) or None
            reason = RejectReason.MALFORMED_FHIR
            message = str(error["msg"])[:300]
            top = str(error["loc"][0]) if error["loc"] else ""
            if top in _TIME_FIELDS:
                value = resource.get(top)
                if isinstance(value, dict):
                    value = value.get(str(error["loc"][1])) if len(error["loc"]) > 1 else None
                try:
                    parse_fhir_datetime(value, day_zone)
                except _Reject as time_error:
                    reason, message = time_error.reason, time_error.message
            details.append((reason, where, message))
        if not details:
            return
        details.sort(key=lambda d: d[0] is RejectReason.MALFORMED_FHIR)
        reason, where, message = details[0]
        raise _Reject(reason, message, where) from None


def _is_quantity_value(location: tuple[int | str, ...]) -> bool:
    """Whether a validation error is about a ``valueQuantity.value`` (of the Observation or a
    component): ``true``, ``"250"`` or ``1e999`` there is a value that is not a usable number
    (``invalid_value``, ``implausible_value``), not a malformed resource."""
    return len(location) >= 2 and location[-2:] == ("valueQuantity", "value")


def _patient_id(resource: dict[str, Any], bundle: _BundleIndex, config: FhirConfig) -> str:
    subject = resource.get("subject")
    if not isinstance(subject, dict):
        raise _Reject(RejectReason.MISSING_PATIENT_ID, "no subject", "subject")
    reference = subject.get("reference")
    if isinstance(reference, str) and reference.strip():
        reference = reference.strip()
        if reference.startswith("#"):
            contained = _contained(resource, reference)
            found = _identifier_of(contained, config) if contained else None
            if found:
                return found
            raise _Reject(
                RejectReason.MISSING_PATIENT_ID,
                f"contained subject {reference} has no usable identifier",
                "subject",
            )
        if reference.startswith("urn:uuid:") or reference.startswith("urn:oid:"):
            target = bundle.resolve(reference)
            if target is not None and target.get("resourceType") == "Patient":
                found = _identifier_of(target, config)
                if found:
                    return found
                if config.patient_identifier_system:
                    raise _Reject(
                        RejectReason.MISSING_PATIENT_ID,
                        f"Patient {reference} has no identifier of system "
                        f"{config.patient_identifier_system}",
                        "subject",
                    )
            elif target is not None:
                raise _Reject(
                    RejectReason.MISSING_PATIENT_ID,
                    f"subject {reference} is a {target.get('resourceType')}, not a Patient",
                    "subject",
                )
            return reference.split(":", 2)[2]
        tail = reference_tail(reference)
        if tail is not None and tail.startswith("Patient/"):
            return tail.removeprefix("Patient/")
        raise _Reject(
            RejectReason.MISSING_PATIENT_ID,
            f"subject {reference[:80]!r} is not a Patient reference",
            "subject",
        )
    identifier = subject.get("identifier")
    found = _pick_identifier([identifier], config) if isinstance(identifier, dict) else None
    if found:
        return found
    raise _Reject(
        RejectReason.MISSING_PATIENT_ID, "subject has no reference or identifier", "subject"
    )


def _contained(resource: dict[str, Any], reference: str) -> dict[str, Any] | None:
    """The contained resource a local reference (``#id``) names."""
    contained = resource.get("contained")
    return next(
        (
            c
            for c in (contained if isinstance(contained, list) else [])
            if isinstance(c, dict) and f"#{c.get('id')}" == reference
        ),
        None,
    )


def _identifier_of(patient: dict[str, Any], config: FhirConfig) -> str | None:
    identifiers = patient.get("identifier")
    return _pick_identifier(identifiers, config) if isinstance(identifiers, list) else None


def _pick_identifier(identifiers: list[Any], config: FhirConfig) -> str | None:
    wanted = config.patient_identifier_system
    for identifier in identifiers:
        if not isinstance(identifier, dict):
            continue
        value = identifier.get("value")
        if not isinstance(value, str) or not value.strip():
            continue
        if wanted is None or identifier.get("system") == wanted:
            return value.strip()
    return None


@dataclass(frozen=True, slots=True)
class _Value:
    value: float | None = None
    unit: str | None = None
    detected: bool | None = None
    sensitivity: float | None = None
    comparator: Comparator | None = None


def _result(
    entry: _Entry,
    holder: dict[str, Any],
    code: _Code,
    bundle: _BundleIndex,
    config: FhirConfig,
    policy: Policy,
) -> LabResult | Rejection | Unmapped:
    """One result: ``holder`` carries code and value (the Observation or a component)."""
    resource = entry.resource
    assert code.analyte is not None
    status_text = resource.get("status")
    if status_text == "registered":
        return Unmapped(code.shown, "status registered: no result yet")
    patient_id = _patient_id(resource, bundle, config)
    status = _STATUS.get(status_text) if isinstance(status_text, str) else None
    if status is None:
        raise _Reject(
            RejectReason.INVALID_FIELD,
            f"status {status_text!r} cannot be acted on",
            "status",
        )
    effective = _effective_raw(resource)
    if effective is None:
        if resource.get("effectiveTiming") is not None:
            raise _Reject(
                RejectReason.INVALID_FIELD, "effectiveTiming is not a collection time", "effective"
            )
        effective = bundle.inherited_time(entry)
    if effective is None:
        raise _Reject(
            RejectReason.MISSING_FIELD,
            "no collection time (effectiveDateTime / effectivePeriod.start)",
            "effective",
        )
    collected_at = _time(effective, policy.tz, "effective")
    issued = resource.get("issued")
    resulted_at = _time(issued, policy.tz, "issued") if issued is not None else None

    cancelled = status is ResultStatus.CANCELLED
    try:
        value = _value(holder, code.analyte)
    except _Reject:
        if not cancelled:
            raise
        value = _Value()

    method = None
    if code.analyte is Analyte.MRD:
        method = config.mrd_methods.get(code.local or "") or mrd_method_from_text(
            _concept_text(resource.get("method"))
        )
    identifiers = resource.get("identifier")
    accession = None
    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], dict):
        accession = identifiers[0].get("value")
    record: dict[str, Any] = {
        "type": "lab_result",
        "patient_id": patient_id,
        "analyte": code.analyte,
        "value": value.value,
        "comparator": value.comparator,
        "unit": value.unit,
        "collected_at": collected_at,
        "resulted_at": resulted_at,
        "status": status,
        "accession": accession or _specimen_accession(resource, bundle) or resource.get("id"),
        "source": config.source or _source(resource),
        "loinc": code.loinc,
        "method": method,
        "detected": value.detected,
        "sensitivity": value.sensitivity,
    }
    return lab_result_from_fields(record, policy, _FIELDS, patient_id)


_FIELDS: Final = {
    "value": "value[x]",
    "comparator": "valueQuantity.comparator",
    "unit": "valueQuantity.code",
    "collected_at": "effective[x]",
    "resulted_at": "issued",
    "accession": "identifier",
    "loinc": "code",
    "detected": "value[x]",
    "sensitivity": "value[x]",
    "status": "status",
}


def _specimen_accession(resource: dict[str, Any], bundle: _BundleIndex) -> str | None:
    """``accessionIdentifier`` of the Specimen the Observation references (in the Bundle, or
    contained): the laboratory's accession number, as a transaction Bundle carries it."""
    specimen = resource.get("specimen")
    reference = specimen.get("reference") if isinstance(specimen, dict) else None
    if not isinstance(reference, str):
        return None
    target = (
        _contained(resource, reference) if reference.startswith("#") else bundle.resolve(reference)
    )
    if not isinstance(target, dict) or target.get("resourceType") != "Specimen":
        return None
    accession = target.get("accessionIdentifier")
    value = accession.get("value") if isinstance(accession, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def _time(value: Any, day_zone: tzinfo, field_name: str) -> datetime:
    try:
        return parse_fhir_datetime(value, day_zone)
    except _Reject as exc:
        raise _Reject(exc.reason, exc.message, field_name) from None


def _source(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("source"), str) and meta["source"]:
        return str(meta["source"])
    performers = resource.get("performer")
    if isinstance(performers, list) and performers and isinstance(performers[0], dict):
        for key in ("display", "reference"):
            if isinstance(performers[0].get(key), str) and performers[0][key]:
                return str(performers[0][key])
    return None


def _concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")]
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict):
            parts.append(coding.get("display"))
    return " ".join(p for p in parts if isinstance(p, str))


def _value(holder: dict[str, Any], analyte: Analyte) -> _Value:
    quantity = holder.get("valueQuantity")
    if isinstance(quantity, dict):
        return _quantity(quantity)
    if "valueInteger" in holder and isinstance(holder["valueInteger"], int):
        return _Value(value=_as_float(holder["valueInteger"]))
    if isinstance(holder.get("valueString"), str):
        text = holder["valueString"]
        if analyte is not Analyte.MRD:
            raise _Reject(
                RejectReason.INVALID_FIELD,
                f"{analyte.value} needs valueQuantity, got valueString {text[:60]!r}",
                "valueString",
            )
        return _mrd_text(text, "valueString")
    concept = holder.get("valueCodeableConcept")
    if isinstance(concept, dict):
        if analyte is not Analyte.MRD:
            raise _Reject(
                RejectReason.INVALID_FIELD,
                f"{analyte.value} needs valueQuantity, got valueCodeableConcept",
                "valueCodeableConcept",
            )
        for coding in concept.get("coding") or []:
            if (
                isinstance(coding, dict)
                and coding.get("system") == SNOMED
                and coding.get("code") in SNOMED_FINDINGS
            ):
                return _Value(detected=SNOMED_FINDINGS[coding["code"]])
        return _mrd_text(_concept_text(concept), "valueCodeableConcept")
    if isinstance(holder.get("valueBoolean"), bool):
        if analyte is not Analyte.MRD:
            raise _Reject(
                RejectReason.INVALID_FIELD,
                f"{analyte.value} needs valueQuantity, got valueBoolean",
                "valueBoolean",
            )
        return _Value(detected=holder["valueBoolean"])
    other = next((key for key in holder if key.startswith("value")), None)
    if other is not None:
        raise _Reject(
            RejectReason.INVALID_FIELD, f"{other} is not accepted for {analyte.value}", other
        )
    return _Value()


def _quantity(quantity: dict[str, Any]) -> _Value:
    comparator = quantity.get("comparator")
    number = quantity.get("value")
    censored = _CENSORED.get(comparator) if isinstance(comparator, str) else None
    if comparator not in (None, "", "=") and censored is None:
        raise _Reject(
            RejectReason.INVALID_FIELD,
            f"comparator {str(comparator)[:20]!r} is not a limit (<, <=, >=, >)",
            "valueQuantity.comparator",
        )
    if number is None:
        return _Value()
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise _Reject(
            RejectReason.INVALID_VALUE,
            f"valueQuantity.value {str(number)[:40]!r} is not a JSON number",
            "valueQuantity.value",
        )
    system, code, text = quantity.get("system"), quantity.get("code"), quantity.get("unit")
    coded = isinstance(code, str) and bool(code.strip())
    if system not in (None, UCUM) and coded:
        raise _Reject(
            RejectReason.UNKNOWN_UNIT,
            f"unit coded as {code!r} in {system!r}, not UCUM ({UCUM})",
            "valueQuantity.system",
        )
    unit = None
    if system == UCUM and coded:
        unit = code
    elif isinstance(text, str) and text.strip():
        unit = text
    return _Value(value=_as_float(number), unit=unit, comparator=censored)


def _as_float(number: int | float) -> float:
    """A JSON number as a float; an integer beyond a double is infinite (then implausible)."""
    try:
        return float(number)
    except OverflowError:
        return math.inf


def _mrd_text(text: str, field_name: str) -> _Value:
    finding = mrd_from_text(text)
    if finding is None:
        raise _Reject(
            RejectReason.INVALID_FIELD,
            f"MRD text {text[:60]!r} states neither detected nor not detected unambiguously",
            field_name,
        )
    return _Value(detected=finding.detected, sensitivity=finding.sensitivity)
