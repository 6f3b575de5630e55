"""``DeadLetter``: a rejected input with its machine-readable reasons (``carwatch.deadletter``)."""

from schemas.base import Timestamp, WireModel
from schemas.vocab import RejectReason


class RejectDetail(WireModel):
    reason: RejectReason
    field: str | None = None
    message: str


class DeadLetter(WireModel):
    """``raw`` is the input as received (text; undecodable bytes replaced). ``inbound`` is the id
    of the whole raw message in the listeners' message store (header ``carwatch-message-id`` of
    its ``carwatch.inbound`` record, written at ``received_at``) when ``raw`` may be only a part
    of it (one OBX, one entry), so that ``carwatch deadletter retry`` can re-submit the
    message."""

    reason: RejectReason
    details: tuple[RejectDetail, ...]
    raw: str
    source: str
    location: str | None = None
    received_at: Timestamp | None = None
    inbound: str | None = None
