"""What the pages show, read from the read model: inbox, alert, patient course, freshness.

Pure reads in the caller's session; the views (``streams.web.app``) render them. Whether an alert
counts as acknowledged is decided here, at read time, from the acknowledgements and the alert's
``attention_seq`` (docs/web.md "Acknowledgements"): an acknowledgement counts when the event it
refers to is the alert's latest raise, escalation or re-opening, or later. Acknowledgements still
in the outbox count too, marked ``pending`` until they are back from ``carwatch.acks``.
"""

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.ack import AckEvent
from schemas.vocab import RuleName, Severity
from streams.web.db import (
    AckRow,
    AlertEventRow,
    AlertRow,
    ClinicalRecord,
    IngestStatus,
    LabRow,
    OutboxRow,
    Patient,
    WebMeta,
)
from streams.web.ingest import STATUS_ROW
from streams.web.readmodel import SEVERITY_RANK

URL_KEY = "patient_url_key"


def day_number(moment: datetime, day0: datetime, tz: tzinfo) -> int:
    """Calendar day in the policy's time zone, the infusion date day 0 (docs/clinical-spec.md §0)."""
    return (moment.astimezone(tz).date() - day0.astimezone(tz).date()).days


# -- opaque patient URLs ------------------------------------------------------------------------


class PatientKeys:
    """``/patients/<key>``: an HMAC of the patient id, so no MRN appears in a URL or a log.

    The key is random per database (``web_meta``), made once, and survives rebuilds.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._known: dict[str, str] = {}

    @classmethod
    def load(cls, session: Session) -> "PatientKeys":
        row = session.get(WebMeta, URL_KEY)
        if row is None:
            row = WebMeta(key=URL_KEY, value=secrets.token_hex(32))
            session.add(row)
        return cls(bytes.fromhex(row.value))

    def key(self, patient_id: str) -> str:
        digest = hmac.new(self._secret, patient_id.encode(), hashlib.sha256).hexdigest()[:24]
        self._known[digest] = patient_id
        return digest

    def patient(self, session: Session, key: str) -> str | None:
        """The patient id behind ``key``, if it is a monitored patient or has alerts."""
        if key not in self._known:
            for patient_id in _all_patient_ids(session):
                self.key(patient_id)
        return self._known.get(key)


def _all_patient_ids(session: Session) -> set[str]:
    ids = set(session.scalars(select(Patient.patient_id)))
    return ids | set(session.scalars(select(AlertRow.patient_id).distinct()))


# -- acknowledgements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AckView:
    event_id: str
    alert_event_id: str
    action: str
    reason: str | None
    note: str | None
    by: str
    at: datetime
    via: str
    #: still in the outbox, not yet confirmed on ``carwatch.acks``
    pending: bool
    #: the alert event it refers to (None: an event this read model has not seen)
    seq: int | None


def acks_of(session: Session, alert_ids: Sequence[str]) -> dict[str, list[AckView]]:
    """Every acknowledgement of these alerts, oldest first: the topic's, then the outbox's."""
    if not alert_ids:
        return {}
    stored = session.scalars(select(AckRow).where(AckRow.alert_id.in_(alert_ids))).all()
    seen = {row.event_id for row in stored}
    outbox = session.scalars(
        select(OutboxRow).where(OutboxRow.alert_id.in_(alert_ids), OutboxRow.event_id.not_in(seen))
    ).all()
    waiting = [AckEvent.model_validate_json(row.payload) for row in outbox]
    published = {row.event_id for row in outbox if row.published_at is not None}
    referenced = {row.alert_event_id for row in stored} | {a.alert_event_id for a in waiting}
    seqs: dict[str, int] = {
        event_id: seq
        for event_id, seq in session.execute(
            select(AlertEventRow.event_id, AlertEventRow.seq).where(
                AlertEventRow.event_id.in_(referenced)
            )
        )
    }
    views = [_stored_view(row, seqs) for row in stored]
    views += [_waiting_view(ack, seqs, ack.event_id not in published) for ack in waiting]
    out: dict[str, list[AckView]] = {}
    for alert_id, view in sorted(views, key=lambda item: (item[1].at, item[1].event_id)):
        out.setdefault(alert_id, []).append(view)
    return out


def _stored_view(row: AckRow, seqs: dict[str, int]) -> tuple[str, AckView]:
    view = AckView(
        row.event_id,
        row.alert_event_id,
        row.action,
        row.reason,
        row.note,
        row.by_user,
        row.at,
        row.via,
        pending=False,
        seq=seqs.get(row.alert_event_id),
    )
    return row.alert_id, view


def _waiting_view(ack: AckEvent, seqs: dict[str, int], unsent: bool) -> tuple[str, AckView]:
    view = AckView(
        ack.event_id,
        ack.alert_event_id,
        ack.action.value,
        ack.reason.value if ack.reason else None,
        ack.note,
        ack.by,
        ack.at,
        ack.via,
        pending=unsent,
        seq=seqs.get(ack.alert_event_id),
    )
    return ack.alert_id, view


def current_ack(alert: AlertRow, acks: Iterable[AckView]) -> AckView | None:
    """The latest acknowledgement that still counts for ``alert`` (None: unacknowledged)."""
    counting = [a for a in acks if a.seq is not None and a.seq >= alert.attention_seq]
    return counting[-1] if counting else None


# -- inbox ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxItem:
    alert: AlertRow
    patient_key: str
    #: today's day number since infusion (None when the infusion was not seen)
    today: int | None
    ack: AckView | None


def inbox(
    session: Session,
    keys: PatientKeys,
    now: datetime,
    tz: tzinfo,
    rule: RuleName | None = None,
    severity: Severity | None = None,
) -> list[InboxItem]:
    """Open alerts, critical first, the most recently changed first within a severity."""
    query = select(AlertRow, Patient.infused_at).outerjoin(
        Patient, Patient.patient_id == AlertRow.patient_id
    )
    query = query.where(AlertRow.status == "open")
    if rule is not None:
        query = query.where(AlertRow.rule == rule.value)
    if severity is not None:
        query = query.where(AlertRow.severity == severity.value)
    rows = session.execute(query).all()
    acks = acks_of(session, [alert.alert_id for alert, _ in rows])
    items = [
        InboxItem(
            alert,
            keys.key(alert.patient_id),
            None if infused_at is None else day_number(now, infused_at, tz),
            current_ack(alert, acks.get(alert.alert_id, ())),
        )
        for alert, infused_at in rows
    ]
    items.sort(
        key=lambda item: (
            -SEVERITY_RANK[Severity(item.alert.severity)],
            -item.alert.updated_at.timestamp(),
            item.alert.alert_id,
        )
    )
    return items


# -- one alert --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertDetail:
    alert: AlertRow
    events: list[AlertEventRow]
    acks: list[AckView]
    current: AckView | None
    patient_key: str


def alert_detail(session: Session, keys: PatientKeys, alert_id: str) -> AlertDetail | None:
    alert = session.get(AlertRow, alert_id)
    if alert is None:
        return None
    events = session.scalars(
        select(AlertEventRow).where(AlertEventRow.alert_id == alert_id).order_by(AlertEventRow.seq)
    ).all()
    acks = acks_of(session, [alert_id]).get(alert_id, [])
    return AlertDetail(
        alert, list(events), acks, current_ack(alert, acks), keys.key(alert.patient_id)
    )


# -- one patient ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientCourse:
    patient_id: str
    patient: Patient | None
    labs: list[LabRow]
    events: list[ClinicalRecord]
    alerts: list[AlertDetail]


def patient_course(session: Session, keys: PatientKeys, patient_id: str) -> PatientCourse:
    labs = session.scalars(
        select(LabRow)
        .where(LabRow.patient_id == patient_id)
        .order_by(LabRow.kafka_partition, LabRow.kafka_offset)
    ).all()
    events = session.scalars(
        select(ClinicalRecord)
        .where(ClinicalRecord.patient_id == patient_id)
        .order_by(ClinicalRecord.at, ClinicalRecord.id)
    ).all()
    alert_ids = session.scalars(
        select(AlertRow.alert_id)
        .where(AlertRow.patient_id == patient_id)
        .order_by(AlertRow.episode_start, AlertRow.alert_id)
    ).all()
    alerts = [d for d in (alert_detail(session, keys, a) for a in alert_ids) if d is not None]
    return PatientCourse(
        patient_id, session.get(Patient, patient_id), list(labs), list(events), alerts
    )


# -- freshness --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """How old the data on a page is, for the banner every page shows."""

    caught_up_at: datetime | None
    contacted_at: datetime | None
    lag: int | None
    #: seconds since the data was last complete (None: never)
    age_s: float | None
    #: the ingester has not reached the broker for longer than the staleness limit
    broker_silent: bool
    stale: bool


def freshness(session: Session, now: datetime, stale_after_s: float) -> Freshness:
    status = session.get(IngestStatus, STATUS_ROW)
    if status is None:
        return Freshness(None, None, None, None, True, True)
    age = None if status.caught_up_at is None else (now - status.caught_up_at).total_seconds()
    silent = (
        status.contacted_at is None or (now - status.contacted_at).total_seconds() > stale_after_s
    )
    stale = age is None or age > stale_after_s
    return Freshness(status.caught_up_at, status.contacted_at, status.lag, age, silent, stale)
