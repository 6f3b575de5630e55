"""Shared pydantic configuration and field types of the wire contracts."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, PlainSerializer, StringConstraints


def utc_isoformat(moment: datetime) -> str:
    """Serialise an aware datetime in UTC with a ``Z`` suffix (one spelling per instant)."""
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


#: A timezone-aware timestamp; naive ones are rejected (reason ``naive_datetime``).
Timestamp = Annotated[AwareDatetime, PlainSerializer(utc_isoformat, return_type=str)]

#: Patient identifier as the hospital sends it (MRN). PHI: never in a metric label or a log.
PatientId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class WireModel(BaseModel):
    """Base of every wire record.

    Unknown keys are ignored (a tolerant reader: interface engines add fields), but every field
    we do read is validated strictly.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, use_enum_values=False)
