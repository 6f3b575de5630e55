"""``DeadLetter``: a rejected input with its machine-readable reasons (``carwatch.deadletter``)."""

from schemas.base import Timestamp, WireModel
from schemas.vocab import RejectReason


class RejectDetail(WireModel):
    reason: RejectReason
    field: str | None = None
    message: str


class DeadLetter(WireModel):
    """``raw`` is the input as received (text; undecodable bytes replaced)."""

    reason: RejectReason
    details: tuple[RejectDetail, ...]
    raw: str
    source: str
    location: str | None = None
    received_at: Timestamp | None = None
