"""Decoding NDJSON wire records into models; errors are values (a ``Rejection``), not exceptions."""

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import RejectDetail
from schemas.lab_result import LabResult
from schemas.vocab import RejectReason

WireRecord = LabResult | Infusion | ClinicalEvent

_MODELS: dict[str, type[WireRecord]] = {
    "lab_result": LabResult,
    "infusion": Infusion,
    "clinical_event": ClinicalEvent,
}
_VOCABULARY_FIELDS = {"risk_factors", "kind", "costimulatory_domain", "method", "status"}
_PYDANTIC_REASONS = {
    "timezone_aware": RejectReason.NAIVE_DATETIME,
    "missing": RejectReason.MISSING_FIELD,
}
#: Type errors of the strict number and boolean fields (docs/clinical-spec.md 0 "Numbers are numbers").
_VALUE_TYPE_ERRORS = {"float_type", "bool_type", "finite_number"}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one input could not be accepted. ``reason`` is the first detail's reason."""

    details: tuple[RejectDetail, ...]
    patient_id: str | None = None

    @property
    def reason(self) -> RejectReason:
        return self.details[0].reason

    @classmethod
    def of(
        cls,
        reason: RejectReason,
        message: str,
        field: str | None = None,
        patient_id: str | None = None,
    ) -> "Rejection":
        return cls((RejectDetail(reason=reason, field=field, message=message),), patient_id)


#: The three records by their ``type``, validated straight from JSON text (``decode_record``).
_WIRE_JSON: TypeAdapter[WireRecord] = TypeAdapter(
    Annotated[WireRecord, Field(discriminator="type")]
)


def decode_record(data: bytes | str | dict[str, Any]) -> WireRecord | Rejection:
    """Decode one NDJSON line (or an already-parsed object) into a wire record.

    A line is first validated straight from its text by pydantic's JSON parser, a third faster
    than ``json.loads`` and validating the object; anything that parser does not accept takes
    the checked path below, which says why -- so a rejection is the same whichever parser
    could not read the line (``tests/unit/schemas/test_records.py`` holds both paths equal).
    """
    if isinstance(data, dict):
        return _decode_object(data)
    try:
        return _WIRE_JSON.validate_json(data)
    except ValueError:  # ValidationError, or text pydantic's parser refuses
        return _decode_checked(data)


def _decode_checked(data: bytes | str) -> WireRecord | Rejection:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return Rejection.of(RejectReason.MALFORMED_JSON, f"not JSON: {exc}"[:300])
    return _decode_object(obj)


def _decode_object(obj: Any) -> WireRecord | Rejection:
    if not isinstance(obj, dict):
        return Rejection.of(RejectReason.MALFORMED_JSON, "a record must be a JSON object")
    patient_id = obj.get("patient_id")
    if not isinstance(patient_id, str) or not _encodable(patient_id):
        patient_id = None  # a lone surrogate could not be written as a Kafka key
    kind = obj.get("type")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return Rejection.of(
            RejectReason.UNKNOWN_TYPE,
            f"unknown record type {repr(kind)[:60]}",
            "type",
            patient_id,
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        return Rejection(_details(exc), patient_id)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _details(exc: ValidationError) -> tuple[RejectDetail, ...]:
    details = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or None
        reason = _reason(error["type"], field)
        message = error["msg"]
        if reason in (RejectReason.UNKNOWN_VOCABULARY, RejectReason.UNKNOWN_ANALYTE):
            message = f"unknown value {error['input']!r}: {message}"
        details.append(RejectDetail(reason=reason, field=field, message=message))
    return tuple(details)


def _reason(error_type: str, field: str | None) -> RejectReason:
    if error_type in RejectReason.__members__.values():
        return RejectReason(error_type)
    if error_type in _PYDANTIC_REASONS:
        return _PYDANTIC_REASONS[error_type]
    if error_type in _VALUE_TYPE_ERRORS:
        return RejectReason.INVALID_VALUE
    top = (field or "").split(".")[0]
    if error_type == "enum" and top == "analyte":
        return RejectReason.UNKNOWN_ANALYTE
    if error_type == "enum" and top in _VOCABULARY_FIELDS:
        return RejectReason.UNKNOWN_VOCABULARY
    return RejectReason.INVALID_FIELD
