"""The message store (``carwatch.inbound``): reading it back and reprocessing what it holds.

The listeners write every raw HL7 message and FHIR body there before they answer
(``LabPublisher.store_inbound``): the value is the message byte for byte, the headers its id,
feed, content type and arrival time, the key the feed (one feed's messages stay in order).
``carwatch reprocess`` and ``carwatch deadletter retry`` read it back here and run each message
through the same parsing and encoding as the listener (``streams.listeners.jobs``), with the feed
configuration of today — so a result that was unmapped because a local code was missing is
published once the code is mapped.

Reprocessing publishes the accepted results only: the rejections of the first pass are already
on the dead-letter topic, and a result published again is a duplicate by the spec's duplicate
key (docs/clinical-spec.md §0 "Duplicates"), which the worker ignores. So reprocessing twice changes
nothing.
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from schemas.records import Rejection
from streams.core.policy import Policy
from streams.ingest.fhir.observation import FhirConfig, FhirParse, parse_fhir
from streams.ingest.hl7.oru import Hl7Config, parse_oru
from streams.listeners.fhir_answers import XML_TYPES
from streams.listeners.jobs import plan_fhir, plan_hl7, read_fhir_body
from streams.listeners.plans import Plan
from streams.listeners.publisher import (
    CONTENT_TYPE_HEADER,
    FEED_HEADER,
    MESSAGE_ID_HEADER,
    RECEIVED_AT_HEADER,
)
from streams.settings import Settings

#: Seconds a reader waits for records it knows are there (end offsets taken at its start).
READ_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Stored:
    """One record of a topic, with where it is."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        return self.headers.get(name, b"").decode("utf-8", "replace")


def read_topic(settings: Settings, topic: str, since: datetime | None = None) -> Iterator[Stored]:
    """Every record of ``topic`` from ``since`` (its timestamp, i.e. arrival) to the end offsets
    as they were when reading began; partitions one after the other."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        group_id=None, enable_auto_commit=False, **settings.kafka_python_config()
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"topic {topic} does not exist")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends = consumer.end_offsets(assigned)
        starts = _start_offsets(consumer, assigned, since)
        for tp in assigned:
            if starts[tp] >= ends[tp]:
                continue
            consumer.seek(tp, starts[tp])
            yield from _read_partition(consumer, tp, ends[tp])
    finally:
        consumer.close()


def _start_offsets(consumer: Any, assigned: list[Any], since: datetime | None) -> dict[Any, int]:
    beginnings: dict[Any, int] = consumer.beginning_offsets(assigned)
    if since is None:
        return beginnings
    found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in assigned})
    ends: dict[Any, int] = consumer.end_offsets(assigned)
    return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in assigned}


def _read_partition(consumer: Any, tp: Any, end: int) -> Iterator[Stored]:
    import time

    deadline = time.monotonic() + READ_TIMEOUT_S
    position = consumer.position(tp)
    while position < end and time.monotonic() < deadline:
        for record in consumer.poll(timeout_ms=500, max_records=500).get(tp, []):
            if record.offset >= end:
                return
            yield Stored(
                record.topic,
                record.partition,
                record.offset,
                record.timestamp,
                record.key,
                record.value,
                {k: bytes(v) for k, v in record.headers or []},
            )
        position = consumer.position(tp)


@dataclass
class Reprocessed:
    """What reprocessing a set of stored messages found (a CLI summary)."""

    messages: int = 0
    plan: Plan = field(default_factory=Plan)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, plan: Plan) -> None:
        self.messages += 1
        self.plan.results.extend(plan.results)
        self.plan.accepted.update(plan.accepted)
        self.plan.reasons.update(plan.reasons)
        self.plan.mismatched.update(plan.mismatched)
        self.plan.unmapped += plan.unmapped

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.plan.reasons.items()))
        skipped = ", ".join(f"{k}={n}" for k, n in sorted(self.skipped.items()))
        return (
            f"messages {self.messages}, results {len(self.plan.results)} published, "
            f"rejected {sum(self.plan.reasons.values())}"
            + (f" ({reasons})" if reasons else "")
            + f", unmapped {self.plan.unmapped}, code/unit mismatches "
            f"{sum(self.plan.mismatched.values())}" + (f", skipped {skipped}" if skipped else "")
        )


def replan(stored: Stored, hl7: Hl7Config, fhir: FhirConfig, policy: Policy) -> Plan | None:
    """One stored message parsed again with today's configuration (``None``: not a message
    this version reads)."""
    content_type = stored.header(CONTENT_TYPE_HEADER)
    received_at = datetime.fromisoformat(stored.header(RECEIVED_AT_HEADER).replace("Z", "+00:00"))
    message_id = stored.header(MESSAGE_ID_HEADER) or None
    if "hl7" in content_type:
        message = parse_oru(stored.value, hl7, policy)
        source = "mllp"
        return plan_hl7(
            message, stored.value, source=source, received_at=received_at, inbound=message_id
        )
    if "json" in content_type or content_type in XML_TYPES:
        document = read_fhir_body(stored.value, content_type in XML_TYPES)
        parsed = (
            FhirParse(document)
            if isinstance(document, Rejection)
            else parse_fhir(document, fhir, policy)
        )
        return plan_fhir(
            parsed,
            stored.value,
            source="fhir",
            path=f"reprocess {stored.header(FEED_HEADER)}",
            received_at=received_at,
            inbound=message_id,
        )
    return None


def find_message(settings: Settings, message_id: str, since: datetime | None) -> Stored | None:
    """The stored message with ``message_id``, searched from ``since`` (its arrival)."""
    for stored in read_topic(settings, settings.inbound_topic, since):
        if stored.header(MESSAGE_ID_HEADER) == message_id:
            return stored
    return None
