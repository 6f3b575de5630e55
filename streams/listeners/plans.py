"""What one inbound message or body turns into, encoded for Kafka (pure; runs in the worker pool).

Shared by the MLLP listener, the FHIR gateway, ``carwatch reprocess`` and ``carwatch deadletter
retry``: accepted results become labs-topic records keyed by the patient id (in message order,
consecutively, so the worker sees one specimen together), rejections dead letters, unmapped
results only a count. Everything is serialised here — in the parse worker, off the event loop —
so that publishing a message of 10,000 results costs the loop only the sends.

A dead letter's ``raw`` is cut to ``MAX_DEAD_LETTER_RAW`` characters (with a marker) so that one
oversized input cannot exceed the broker's message size limit and block its sender forever; the
whole message is in the message store, which ``inbound`` names.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import Rejection
from streams.ingest.files import InputItem
from streams.ingest.normalise import ResultItem

#: Characters of ``DeadLetter.raw`` kept (the broker's default message limit is about 1 MB).
MAX_DEAD_LETTER_RAW: Final = 256 * 1024

Record = tuple[bytes | None, bytes]


@dataclass(slots=True)
class Plan:
    """The Kafka records of one input and its tallies (analyte / reason → count)."""

    results: list[Record] = field(default_factory=list)
    dead_letters: list[Record] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    mismatched: Counter[str] = field(default_factory=Counter)
    unmapped: int = 0

    @property
    def rejected(self) -> int:
        return len(self.dead_letters)


def fit(dead_letter: DeadLetter) -> DeadLetter:
    raw = dead_letter.raw
    if len(raw) <= MAX_DEAD_LETTER_RAW:
        return dead_letter
    cut = len(raw) - MAX_DEAD_LETTER_RAW
    return dead_letter.model_copy(
        update={"raw": f"{raw[:MAX_DEAD_LETTER_RAW]}…[{cut} characters cut by carwatch]"}
    )


def _dead_letter(
    item: InputItem, source: str, received_at: datetime, inbound: str | None
) -> tuple[Record, str]:
    dead_letter = item.dead_letter(source, received_at)
    assert dead_letter is not None and isinstance(item.outcome, Rejection)
    key = item.outcome.patient_id
    value = fit(dead_letter.model_copy(update={"inbound": inbound})).model_dump_json()
    return (key.encode() if key else None, value.encode()), dead_letter.reason.value


def plan_items(
    items: Sequence[ResultItem],
    *,
    source: str,
    prefix: str,
    received_at: datetime,
    inbound: str | None = None,
) -> Plan:
    """Accepted items → results; rejected → dead letters located ``{prefix}:{item location}``;
    unmapped → only counted."""
    plan = Plan()
    for item in items:
        outcome = item.outcome
        if isinstance(outcome, LabResult):
            analyte = outcome.analyte.value if outcome.analyte else "unknown"
            plan.results.append((outcome.patient_id.encode(), outcome.model_dump_json().encode()))
            plan.accepted[analyte] += 1
            if item.mismatch:
                plan.mismatched[analyte] += 1
        elif isinstance(outcome, Rejection):
            entry = InputItem(f"{prefix}:{item.location}", item.raw, outcome)
            record, reason = _dead_letter(entry, source, received_at, inbound)
            plan.dead_letters.append(record)
            plan.reasons[reason] += 1
        else:
            plan.unmapped += 1
    return plan


def plan_rejection(
    rejection: Rejection,
    raw: str,
    *,
    source: str,
    location: str,
    received_at: datetime,
    inbound: str | None = None,
) -> Plan:
    """A whole input rejected (not HL7, not ORU^R01, not JSON, …): one dead letter."""
    record, reason = _dead_letter(InputItem(location, raw, rejection), source, received_at, inbound)
    return Plan(dead_letters=[record], reasons=Counter({reason: 1}))


def plan_message(
    rejection: Rejection | None,
    items: Sequence[ResultItem],
    raw: Callable[[], str],
    *,
    source: str,
    location: str,
    received_at: datetime,
    inbound: str | None,
) -> Plan:
    """The records of one parsed message or body: its whole-input rejection (with ``raw()``, the
    input as text), else its items located under ``location``."""
    if rejection is not None:
        return plan_rejection(
            rejection,
            raw(),
            source=source,
            location=location,
            received_at=received_at,
            inbound=inbound,
        )
    return plan_items(
        items, source=source, prefix=location, received_at=received_at, inbound=inbound
    )
