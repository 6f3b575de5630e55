"""HL7 v2 acknowledgment decisions (original mode), pure: what the MLLP listener answers.

``AA`` every OBX accepted or unmapped, and written; ``AE`` the message was read but some or all
of its content was rejected (the good results *are* written; do not resend unchanged); ``AR``
the message is unusable at the protocol level (not HL7, not ORU^R01, too large) or the broker
did not confirm (``retry``). docs/feeds.md section 8 is the interface engineer's view.
"""

from dataclasses import dataclass
from typing import Final

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.ingest.hl7.oru import AckCode, Hl7Message, error_code_for

#: Characters of MSA-3 / ERR-8 text (MSA-3 is 80 in v2.5.1, but receivers read longer).
MAX_ACK_TEXT: Final = 200
BROKER_DOWN_TEXT: Final = "broker unavailable, retry"


#: Whole-message rejections answered AR (protocol level); the others (missing_patient_id) AE.
PROTOCOL_REJECTIONS: Final = frozenset(
    {RejectReason.MALFORMED_HL7, RejectReason.UNSUPPORTED_MESSAGE}
)


@dataclass(frozen=True, slots=True)
class AckDecision:
    """MSA-1 code, MSA-3/ERR-8 text, ERR-3 (HL7 table 0357) code; ``retry`` tells the sender
    whether resending the same message can succeed (a broker outage) or not."""

    code: AckCode
    text: str
    error_code: str | None = None
    retry: bool = False


def _clip(text: str, limit: int = MAX_ACK_TEXT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(rejection: Rejection) -> str:
    detail = rejection.details[0]
    return f"{detail.reason.value} {detail.field}" if detail.field else detail.reason.value


def decide_ack(message: Hl7Message) -> AckDecision:
    """The ACK for a message whose records the broker has acknowledged."""
    rejection = message.message_rejection
    if rejection is not None:
        detail = rejection.details[0]
        code: AckCode = "AR" if rejection.reason in PROTOCOL_REJECTIONS else "AE"
        return AckDecision(
            code,
            _clip(
                f"message rejected: {_reason(rejection)}: {detail.message}; do not resend unchanged"
            ),
            error_code_for(rejection.reason),
        )
    rejected = [(i.location, i.outcome) for i in message.items if isinstance(i.outcome, Rejection)]
    accepted = sum(1 for i in message.items if isinstance(i.outcome, LabResult))
    unmapped = len(message.items) - len(rejected) - accepted
    tally = f"{accepted} accepted, {unmapped} not monitored"
    mismatched = sum(1 for i in message.items if i.mismatch)
    if mismatched:
        tally += f", {mismatched} code_unit_mismatch (accepted by unit; fix the code)"
    if not rejected:
        return AckDecision("AA", f"{len(message.items)} results: {tally}")
    reasons = "; ".join(f"{location} {_reason(outcome)}" for location, outcome in rejected)
    return AckDecision(
        "AE",
        _clip(f"{len(rejected)} of {len(message.items)} results rejected ({tally}): {reasons}"),
        error_code_for(rejected[0][1].reason),
    )


def broker_unavailable_ack() -> AckDecision:
    """Kafka did not confirm: nothing is acknowledged, the sender must retry."""
    return AckDecision("AR", BROKER_DOWN_TEXT, "207", retry=True)


def frame_too_large_ack(size: int, limit: int) -> AckDecision:
    return AckDecision(
        "AR",
        f"message rejected: {size} bytes exceed the limit of {limit} bytes; do not resend unchanged",
        "207",
    )


def parse_timeout_ack(seconds: float) -> AckDecision:
    """Parsing did not finish in time (a pathological message): rejected, not retried."""
    return AckDecision(
        "AR",
        f"message rejected: not parsed within {seconds:g} s; do not resend unchanged",
        "207",
    )
