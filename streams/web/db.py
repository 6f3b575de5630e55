"""The read model's tables (SQLAlchemy 2) and how ``carwatch web`` connects to them.

SQLite is the embedded default (one file, zero set-up); PostgreSQL by URL
(``postgresql+psycopg://...``) for a deployment where several web processes serve from one
database. The schema is created and changed only by the Alembic migrations in ``migrations/``;
``tests/unit/web/test_migrations.py`` keeps them equal to the models below.

Two kinds of rows live here (docs/web.md "Read model"):

- **Derived** (``DERIVED_TABLES``): patients, clinical records, lab results, alert events and
  alerts, acknowledgements, the consumer offsets and the ingest status. All of it is rebuilt from
  the topics by ``carwatch web --rebuild``; each row remembers the Kafka position it came from.
- **Own**: the acknowledgement outbox (acks not yet on ``carwatch.acks``), login sessions and
  ``web_meta`` (the key that makes patient URLs opaque). A rebuild keeps them.

Timestamps are stored in UTC (naive on SQLite, ``timestamptz`` on PostgreSQL) and always read
back timezone-aware.

SQLite writers take the write lock at ``BEGIN`` (``BEGIN IMMEDIATE``): a deferred transaction
that reads before it writes can fail at once with "database is locked" when another writer (the
ingester, an acknowledgement, a login) holds the lock, whatever the busy timeout. Readers stay
deferred, and WAL mode lets them read while a writer writes.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

#: Longest identifier (alert id, event id, user name) the schema stores.
ID_LENGTH = 200


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        moment = value.astimezone(UTC)
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    """A monitored patient: one whose ``infusion`` record was seen (the latest one counts)."""

    __tablename__ = "patients"

    patient_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    infused_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the latest infusion record as sent (product, costimulatory domain, risk factors, ...)
    infusion: Mapped[dict[str, Any]] = mapped_column(JSON)


class ClinicalRecord(Base):
    """An ``infusion`` or ``clinical_event`` of a monitored patient (course markers)."""

    __tablename__ = "clinical_records"
    __table_args__ = (Index("ix_clinical_records_patient", "patient_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: content hash: a re-delivered record is a duplicate
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    #: ``infusion`` or a ``ClinicalEventKind`` value
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str | None] = mapped_column(String(200))
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)


class LabRow(Base):
    """One lab result as received (normalised to the canonical unit); versions are kept.

    Corrections and cancellations add rows; what replaced what is worked out for display
    (``streams.web.timeline``), so a corrected value is shown struck through, never lost.
    """

    __tablename__ = "lab_results"
    __table_args__ = (Index("ix_lab_results_patient", "patient_id", "analyte", "collected_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: docs/clinical-spec.md §0 "Duplicates": source, accession, analyte, status, time and value
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    analyte: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    comparator: Mapped[str | None] = mapped_column(String(2))
    unit: Mapped[str] = mapped_column(String(32))
    collected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resulted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    accession: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    source: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    method: Mapped[str | None] = mapped_column(String(8))
    detected: Mapped[bool | None] = mapped_column(Boolean)
    sensitivity: Mapped[float | None] = mapped_column(Float)
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)


class AlertEventRow(Base):
    """One alert event as the worker published it (``payload`` is the whole wire record)."""

    __tablename__ = "alert_events"
    __table_args__ = (Index("ix_alert_events_alert", "alert_id", "seq"),)

    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    #: 1, 2, ... in the order of the alert's events (one partition: Kafka keeps that order)
    seq: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)


class AlertRow(Base):
    """An alert as it stands after its latest event.

    ``attention_seq`` is the event that last asked for attention: the raise, an escalation
    (``updated`` to a higher severity) or a re-opening. An acknowledgement of an earlier event
    no longer counts (docs/web.md "Acknowledgements").
    """

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_status", "status", "severity"),)

    alert_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    rule: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(16))
    #: ``open`` (raised/updated), ``resolved`` or ``retracted``
    status: Mapped[str] = mapped_column(String(16))
    last_action: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    episode_start: Mapped[datetime] = mapped_column(UTCDateTime)
    day: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[str] = mapped_column(Text)
    last_event_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    last_seq: Mapped[int] = mapped_column(Integer)
    attention_seq: Mapped[int] = mapped_column(Integer)


class AckRow(Base):
    """An acknowledgement read from ``carwatch.acks`` (the audit trail; never edited)."""

    __tablename__ = "acks"
    __table_args__ = (Index("ix_acks_alert", "alert_id", "at"),)

    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    alert_event_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    patient_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    by_user: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    via: Mapped[str] = mapped_column(String(8))
    kafka_partition: Mapped[int] = mapped_column(Integer)
    kafka_offset: Mapped[int] = mapped_column(BigInteger)


class OutboxRow(Base):
    """An acknowledgement made here, kept until the broker confirmed it on ``carwatch.acks``."""

    __tablename__ = "ack_outbox"
    __table_args__ = (Index("ix_ack_outbox_pending", "published_at", "created_at"),)

    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    #: the ``AckEvent`` wire JSON, published byte for byte
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: exception type of the last failed attempt (never a message: it could quote data)
    last_error: Mapped[str | None] = mapped_column(String(100))


class ConsumerOffset(Base):
    """Next offset to read per topic partition, written in the transaction of its rows."""

    __tablename__ = "consumer_offsets"

    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)


class IngestStatus(Base):
    """How fresh the read model is, for every process that serves from it (one row)."""

    __tablename__ = "ingest_status"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: last time the broker answered the ingester
    contacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: last time every topic partition was read to its end
    caught_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lag: Mapped[int | None] = mapped_column(BigInteger)


class WebSession(Base):
    """A login session; the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebMeta(Base):
    __tablename__ = "web_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


#: What ``--rebuild`` empties: everything that is re-read from the topics.
DERIVED_TABLES: tuple[type[Base], ...] = (
    Patient,
    ClinicalRecord,
    LabRow,
    AlertEventRow,
    AlertRow,
    AckRow,
    ConsumerOffset,
    IngestStatus,
)


@dataclass(frozen=True)
class Database:
    """Engines of one database: ``writer`` transactions lock at BEGIN on SQLite (see above)."""

    url: str
    writer: Engine
    reader: Engine

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any exception."""
        with Session(self.writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.reader, expire_on_commit=False) as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()


def connect(url: str) -> Database:
    """Engines for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    if make_url(url).get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
        return Database(url, engine, engine)
    return Database(url, _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False))


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # pysqlite's own transaction handling off: SQLAlchemy's "begin" below issues BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
