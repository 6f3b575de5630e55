"""``AckEvent``: a clinician's response to an alert, on ``carwatch.acks`` (keyed by patient id).

The audit trail of what was done about an alert is this topic plus the web read model built from
it: an acknowledgement is never edited or deleted, a later one is simply added. Each names the
alert *event* the clinician saw (``alert_event_id``), so an alert that escalates or re-opens after
that event is unacknowledged again (docs/web.md "Acknowledgements").
"""

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import PatientId, Timestamp, WireModel


class AckAction(StrEnum):
    #: seen; nothing more to record
    ACKNOWLEDGED = "acknowledged"
    #: something was done (``note`` says what)
    ACTED_ON = "acted_on"
    #: judged not to apply (``reason`` says why, ``note`` may add detail)
    OVERRIDDEN = "overridden"


class OverrideReason(StrEnum):
    """Why an alert was overridden: a short list, so that override patterns can be counted."""

    #: already known and being managed
    ALREADY_MANAGED = "already_managed"
    #: expected in this patient's course (e.g. donor B-cell recovery after HCT)
    EXPECTED_IN_COURSE = "expected_in_course"
    #: the result is believed to be wrong; a correction is awaited
    RESULT_IN_ERROR = "result_in_error"
    #: not in line with the agreed goals of care
    GOALS_OF_CARE = "goals_of_care"
    #: anything else: ``note`` is required
    OTHER = "other"


#: Free text: bounded, stripped; may mention clinical detail (it is patient data, never logged).
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
#: Who acknowledged: the user name the web login or the CLI's ``--by`` established.
UserName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class AckEvent(WireModel):
    """One acknowledgement. ``event_id`` is unique (a UUID): consumers de-duplicate on it.

    ``acted_on`` needs a ``note`` (what was done); ``overridden`` needs a ``reason``, and a
    ``note`` when the reason is ``other``. ``reason`` belongs to overrides only.
    """

    type: Literal["alert_ack"] = "alert_ack"
    event_id: Identifier
    alert_id: Identifier
    alert_event_id: Identifier
    patient_id: PatientId
    action: AckAction
    reason: OverrideReason | None = None
    note: Note | None = None
    by: UserName
    at: Timestamp
    #: where it was made: the web pages or ``carwatch alerts ack``
    via: Literal["web", "cli"]

    @model_validator(mode="after")
    def _check_action_fields(self) -> Self:
        if self.action is AckAction.ACTED_ON and self.note is None:
            raise PydanticCustomError("missing_field", "acted_on needs a note saying what was done")
        if self.action is AckAction.OVERRIDDEN and self.reason is None:
            raise PydanticCustomError("missing_field", "overridden needs a reason")
        if self.action is not AckAction.OVERRIDDEN and self.reason is not None:
            raise PydanticCustomError("invalid_field", "a reason belongs to overrides only")
        if self.reason is OverrideReason.OTHER and self.note is None:
            raise PydanticCustomError("missing_field", "override reason 'other' needs a note")
        return self
