"""Acknowledgements: made on a page or by ``carwatch alerts ack``, kept, then published.

An acknowledgement is first written to the ``ack_outbox`` table (in the database the pages serve
from), and only then published to ``carwatch.acks`` with ``acks=all``; the row is marked
published once the broker confirmed it. With the broker down the row waits and the outbox
publisher retries, so an acknowledgement made meanwhile reaches the topic when the broker is
back -- and the pages show it at once, marked "not yet sent". A publish whose confirmation was
lost is repeated: the read model drops the second copy by ``event_id``.

The read model learns acknowledgements from the topic, like every other reader (the audit trail
is the topic); the outbox only fills the gap until the record comes back from it.
"""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import func, select

from schemas.ack import AckAction, AckEvent, OverrideReason
from streams.settings import Settings
from streams.web.db import AlertEventRow, AlertRow, Database, OutboxRow
from streams.web.metrics import WebMetrics

log = logging.getLogger(__name__)


class AckRefused(ValueError):
    """The acknowledgement cannot be made (unknown alert or event, missing reason or note)."""


def build_ack(
    alert: AlertRow,
    seen_event: AlertEventRow,
    *,
    action: str,
    reason: str | None,
    note: str | None,
    by: str,
    via: str,
    now: datetime,
) -> AckEvent:
    """The ``AckEvent`` for ``alert`` as seen at ``seen_event``; ``AckRefused`` explains why not."""
    if seen_event.alert_id != alert.alert_id:
        raise AckRefused("that event belongs to another alert")
    if action not in AckAction.__members__.values():
        raise AckRefused(f"unknown action; one of {', '.join(a.value for a in AckAction)}")
    if reason and reason not in OverrideReason.__members__.values():
        raise AckRefused(f"unknown reason; one of {', '.join(r.value for r in OverrideReason)}")
    try:
        return AckEvent(
            event_id=str(uuid.uuid4()),
            alert_id=alert.alert_id,
            alert_event_id=seen_event.event_id,
            patient_id=alert.patient_id,
            action=AckAction(action),
            reason=OverrideReason(reason) if reason else None,
            note=note.strip() if note and note.strip() else None,
            by=by,
            at=now,
            via=via,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        message = str(exc.errors(include_url=False)[0]["msg"])
        raise AckRefused(message.removeprefix("Value error, ")) from exc


def keep(db: Database, ack: AckEvent, now: datetime) -> None:
    """Write the acknowledgement to the outbox (durable before anything is sent)."""
    with db.write() as session:
        session.add(
            OutboxRow(
                event_id=ack.event_id,
                alert_id=ack.alert_id,
                payload=ack.model_dump_json(),
                created_at=now,
                attempts=0,
            )
        )


def pending_count(db: Database) -> int:
    with db.read() as session:
        query = select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None))
        return int(session.scalar(query) or 0)


class OutboxPublisher(Protocol):
    def publish_pending(self, now: datetime) -> int: ...

    def close(self) -> None: ...


@dataclass
class AckPublisher:
    """Publishes the outbox to ``carwatch.acks`` (blocking; the web runs it in a thread)."""

    settings: Settings
    db: Database
    metrics: WebMetrics | None = None
    timeout_s: float = 10.0
    _producer: Any = field(default=None, init=False)

    def publish_pending(self, now: datetime) -> int:
        """Send every unpublished acknowledgement, oldest first; returns how many were sent.

        Stops at the first failure (the broker is down: the rest would fail the same way).
        """
        with self.db.read() as session:
            rows = session.scalars(
                select(OutboxRow)
                .where(OutboxRow.published_at.is_(None))
                .order_by(OutboxRow.created_at, OutboxRow.event_id)
            ).all()
        sent = 0
        for row in rows:
            error = self._send(row)
            self._record(row.event_id, now, error)
            if error is not None:
                break
            sent += 1
        if self.metrics is not None:
            self.metrics.outbox_pending.set(pending_count(self.db))
        return sent

    def _send(self, row: OutboxRow) -> str | None:
        """Publish one row and wait for the broker; the exception type name if that failed."""
        ack = AckEvent.model_validate_json(row.payload)
        try:
            if self._producer is None:
                self._producer = KafkaProducer(
                    acks="all",
                    client_id=f"{self.settings.app_id}-acks",
                    request_timeout_ms=int(self.timeout_s * 1000),
                    max_block_ms=int(self.timeout_s * 1000),
                    **self.settings.kafka_python_config(),
                )
            future = self._producer.send(
                self.settings.acks_topic, value=row.payload.encode(), key=ack.patient_id.encode()
            )
            future.get(timeout=self.timeout_s)
        except (KafkaError, OSError) as exc:
            self._count("failed")
            log.warning("acknowledgement not yet published (%s); kept", type(exc).__name__)
            self.close()
            return type(exc).__name__
        self._count("published")
        return None

    def _record(self, event_id: str, now: datetime, error: str | None) -> None:
        with self.db.write() as session:
            row = session.get(OutboxRow, event_id)
            if row is None:
                return
            row.attempts += 1
            row.last_error = error
            if error is None:
                row.published_at = now

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.ack_publish.labels(outcome).inc()

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=2)
            except (KafkaError, OSError):
                log.debug("closing the acks producer failed")


def acknowledge(
    db: Database,
    publisher: OutboxPublisher,
    alert_id: str,
    *,
    action: str,
    reason: str | None,
    note: str | None,
    by: str,
    now: datetime,
) -> tuple[AckEvent, bool]:
    """``carwatch alerts ack``: acknowledge the alert as it stands now (its latest event).

    Returns the event and whether the broker confirmed it; unconfirmed, it stays in the outbox
    for ``carwatch web`` to publish.
    """
    with db.read() as session:
        alert = session.get(AlertRow, alert_id)
        seen = None if alert is None else session.get(AlertEventRow, alert.last_event_id)
    if alert is None or seen is None:
        raise AckRefused(f"unknown alert {alert_id[:80]!r} (not in the read model)")
    ack = build_ack(alert, seen, action=action, reason=reason, note=note, by=by, via="cli", now=now)
    keep(db, ack, now)
    publisher.publish_pending(now)
    with db.read() as session:
        row = session.get(OutboxRow, ack.event_id)
        published = row is not None and row.published_at is not None
    return ack, published
