"""Applying Kafka records to the read model: idempotent, order-preserving, no Kafka in here.

``apply_record`` takes one record of one of the four topics the read model follows and changes
the database in the caller's transaction (the ingester commits it with the consumer offsets, so
a record is in the database exactly once however often it is delivered). Idempotence is also
built into the rows, so a rebuild over re-delivered or duplicated records converges:

- alert events and acknowledgements by ``event_id``;
- lab results by the duplicate key of docs/clinical-spec.md §0 ("Duplicates": source, accession,
  analyte, status, collection time and value -- plus comparator and MRD detection, which tell
  different results apart), after the same normalisation the worker applies;
- clinical events by their content; an ``infusion`` replaces the patient's enrollment fields.

Only monitored patients are stored (docs/clinical-spec.md §0 "Enrollment"): a lab
result or clinical event of a patient whose ``infusion`` was not seen is counted
``not_enrolled`` and leaves no trace. Alert events are stored whatever was seen of the patient:
the worker raises them only for monitored patients, and a clinician must see every alert.

Rejected records are counted; the labs and clinical topics are the worker's inputs and it
dead-letters what it rejects, so this module only reports rejects of the topics nobody else
validates (alerts, acks) as dead letters for the ingester to publish.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.ack import AckEvent
from schemas.alert import AlertEvent
from schemas.base import utc_isoformat
from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import DeadLetter, RejectDetail
from schemas.lab_result import LabResult
from schemas.records import Rejection, decode_record
from schemas.vocab import AlertAction, RejectReason, Severity
from streams.core.policy import Policy
from streams.ingest.normalise import Unmapped, normalise_lab_result
from streams.web.db import AckRow, AlertEventRow, AlertRow, ClinicalRecord, LabRow, Patient


class Source(StrEnum):
    """The topics the read model follows, as metric labels (whatever the configured names).

    The order is the tie-break of the ingester's merge: a patient's ``infusion`` before the labs
    sent in the same millisecond, alerts after their inputs, acks after their alerts.
    """

    CLINICAL = "carwatch.clinical"
    LABS = "carwatch.labs"
    ALERTS = "carwatch.alerts"
    ACKS = "carwatch.acks"

    @property
    def rank(self) -> int:
        return list(Source).index(self)


class ReadOutcome(StrEnum):
    """``carwatch_readmodel_events_total{outcome}``."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    NOT_ENROLLED = "not_enrolled"
    UNMAPPED = "unmapped"


@dataclass(frozen=True, slots=True)
class Incoming:
    """One Kafka record for the read model."""

    source: Source
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None

    @property
    def order(self) -> tuple[int, int, int, int]:
        """Where it goes in the merged stream (``streams.web.merge``)."""
        return (self.timestamp_ms, self.source.rank, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: ReadOutcome
    #: for rejects of the alerts and acks topics: what the ingester dead-letters
    dead_letter: DeadLetter | None = None


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
OPEN_ACTIONS = (AlertAction.RAISED, AlertAction.UPDATED)


def apply_record(session: Session, record: Incoming, policy: Policy) -> Applied:
    """Apply one record in the caller's transaction; see the module docstring."""
    if record.source is Source.ALERTS:
        alert = _validate(AlertEvent, record)
        if isinstance(alert, Applied):
            return alert
        return Applied(apply_alert_event(session, alert, record))
    if record.source is Source.ACKS:
        ack = _validate(AckEvent, record)
        if isinstance(ack, Applied):
            return ack
        return Applied(apply_ack(session, ack, record))
    return Applied(_apply_input(session, record, policy))


def _validate(model: type[AlertEvent] | type[AckEvent], record: Incoming) -> Any:
    raw = record.value or b""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        details = tuple(
            RejectDetail(
                reason=RejectReason.MALFORMED_JSON
                if error["type"] == "json_invalid"
                else RejectReason.INVALID_FIELD,
                field=".".join(str(p) for p in error["loc"]) or None,
                message=error["msg"],
            )
            for error in exc.errors(include_url=False)[:5]
        )
        letter = DeadLetter(
            reason=details[0].reason,
            details=details,
            raw=raw.decode("utf-8", "replace"),
            source=record.source.value,
            location=f"{record.source.value}[{record.partition}]@{record.offset}",
            received_at=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC),
        )
        return Applied(ReadOutcome.REJECTED, letter)


def _apply_input(session: Session, record: Incoming, policy: Policy) -> ReadOutcome:
    if record.value is None:
        return ReadOutcome.REJECTED
    decoded = decode_record(record.value)
    if isinstance(decoded, Rejection):
        return ReadOutcome.REJECTED
    if isinstance(decoded, Infusion):
        return apply_infusion(session, decoded)
    if isinstance(decoded, ClinicalEvent):
        return apply_clinical_event(session, decoded, record)
    normalised = normalise_lab_result(decoded, policy)
    if isinstance(normalised, Rejection):
        return ReadOutcome.REJECTED
    if isinstance(normalised, Unmapped):
        return ReadOutcome.UNMAPPED
    return apply_lab_result(session, normalised, record)


def _digest(parts: Sequence[object]) -> str:
    text = json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def apply_infusion(session: Session, infusion: Infusion) -> ReadOutcome:
    """Enrol (or re-enrol with corrected fields) the patient."""
    document = infusion.model_dump(mode="json")
    patient = session.get(Patient, infusion.patient_id)
    if patient is None:
        session.add(
            Patient(
                patient_id=infusion.patient_id, infused_at=infusion.infused_at, infusion=document
            )
        )
        return ReadOutcome.APPLIED
    if patient.infusion == document:
        return ReadOutcome.DUPLICATE
    patient.infused_at = infusion.infused_at
    patient.infusion = document
    return ReadOutcome.APPLIED


def apply_clinical_event(session: Session, event: ClinicalEvent, at: Incoming) -> ReadOutcome:
    key = _digest((event.patient_id, event.kind.value, utc_isoformat(event.at), event.detail or ""))
    row = ClinicalRecord(
        dedup_key=key,
        patient_id=event.patient_id,
        kind=event.kind.value,
        at=event.at,
        detail=event.detail,
        kafka_partition=at.partition,
        kafka_offset=at.offset,
    )
    return _add_once(session, row)


def lab_dedup_key(result: LabResult) -> str:
    """docs/clinical-spec.md §0 "Duplicates" (plus the fields that make two results different)."""
    return _digest(
        (
            result.patient_id,
            result.source,
            result.accession,
            result.analyte.value if result.analyte else None,
            result.status.value,
            utc_isoformat(result.collected_at),
            result.value,
            result.comparator.value if result.comparator else None,
            result.detected,
        )
    )


def apply_lab_result(session: Session, result: LabResult, at: Incoming) -> ReadOutcome:
    assert result.analyte is not None and result.unit is not None  # normalised
    row = LabRow(
        dedup_key=lab_dedup_key(result),
        patient_id=result.patient_id,
        analyte=result.analyte.value,
        value=result.value,
        comparator=result.comparator.value if result.comparator else None,
        unit=result.unit,
        collected_at=result.collected_at,
        resulted_at=result.resulted_at,
        status=result.status.value,
        accession=result.accession,
        source=result.source,
        method=result.method.value if result.method else None,
        detected=result.detected,
        sensitivity=result.sensitivity,
        kafka_partition=at.partition,
        kafka_offset=at.offset,
    )
    return _add_once(session, row)


def _add_once(session: Session, row: LabRow | ClinicalRecord) -> ReadOutcome:
    """Store a monitored patient's record unless an equal one is stored already."""
    if session.get(Patient, row.patient_id) is None:
        return ReadOutcome.NOT_ENROLLED
    table = type(row)
    found = session.execute(
        select(table.id).where(table.dedup_key == row.dedup_key).limit(1)
    ).first()
    if found is not None:
        return ReadOutcome.DUPLICATE
    session.add(row)
    return ReadOutcome.APPLIED


def asks_attention(alert: AlertRow | None, event: AlertEvent) -> bool:
    """Does this event put the alert (back) before a clinician, unacknowledged?

    Yes for a raise, an escalation (``updated`` to a higher severity) and a re-opening
    (``updated`` after ``resolved``/``retracted``); no for new evidence at the same severity, a
    de-escalation, or a closing event.
    """
    if alert is None or event.action is AlertAction.RAISED:
        return True
    if event.action is not AlertAction.UPDATED:
        return False
    if alert.status != "open":
        return True
    return SEVERITY_RANK[event.severity] > SEVERITY_RANK[Severity(alert.severity)]


def apply_alert_event(session: Session, event: AlertEvent, at: Incoming) -> ReadOutcome:
    if session.get(AlertEventRow, event.event_id) is not None:
        return ReadOutcome.DUPLICATE
    alert = session.get(AlertRow, event.alert_id)
    attention = asks_attention(alert, event)
    seq = 1 if alert is None else alert.last_seq + 1
    session.add(
        AlertEventRow(
            event_id=event.event_id,
            alert_id=event.alert_id,
            patient_id=event.patient_id,
            seq=seq,
            rule=event.rule.value,
            severity=event.severity.value,
            action=event.action.value,
            event_time=event.event_time,
            decided_at=event.decided_at,
            payload=event.model_dump(mode="json"),
            kafka_partition=at.partition,
            kafka_offset=at.offset,
        )
    )
    if alert is None:
        alert = AlertRow(alert_id=event.alert_id, raised_at=event.decided_at, attention_seq=seq)
        session.add(alert)
    if event.action is AlertAction.RAISED:
        alert.raised_at = event.decided_at
    if attention:
        alert.attention_seq = seq
    alert.patient_id = event.patient_id
    alert.rule = event.rule.value
    alert.severity = event.severity.value
    alert.status = "open" if event.action in OPEN_ACTIONS else event.action.value
    alert.last_action = event.action.value
    alert.updated_at = event.decided_at
    alert.episode_start = event.episode_start
    alert.day = event.day
    alert.summary = event.summary
    alert.last_event_id = event.event_id
    alert.last_seq = seq
    return ReadOutcome.APPLIED


def apply_ack(session: Session, ack: AckEvent, at: Incoming) -> ReadOutcome:
    if session.get(AckRow, ack.event_id) is not None:
        return ReadOutcome.DUPLICATE
    session.add(
        AckRow(
            event_id=ack.event_id,
            alert_id=ack.alert_id,
            alert_event_id=ack.alert_event_id,
            patient_id=ack.patient_id,
            action=ack.action.value,
            reason=ack.reason.value if ack.reason else None,
            note=ack.note,
            by_user=ack.by,
            at=ack.at,
            via=ack.via,
            kafka_partition=at.partition,
            kafka_offset=at.offset,
        )
    )
    return ReadOutcome.APPLIED
