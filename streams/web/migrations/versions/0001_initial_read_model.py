"""The initial read model: patients, course records, lab results, alerts and their events, acks,
the ack outbox, consumer offsets, ingest status, sessions and web_meta (streams/web/db.py).

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-04 23:21:47.039173
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import streams.web.db

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ack_outbox",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("alert_id", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", streams.web.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("ack_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ack_outbox_alert_id"), ["alert_id"], unique=False)
        batch_op.create_index("ix_ack_outbox_pending", ["published_at", "created_at"], unique=False)

    op.create_table(
        "acks",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("alert_id", sa.String(length=200), nullable=False),
        sa.Column("alert_event_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("by_user", sa.String(length=128), nullable=False),
        sa.Column("at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("via", sa.String(length=8), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("acks", schema=None) as batch_op:
        batch_op.create_index("ix_acks_alert", ["alert_id", "at"], unique=False)

    op.create_table(
        "alert_events",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("alert_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("event_time", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.create_index("ix_alert_events_alert", ["alert_id", "seq"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_alert_events_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_action", sa.String(length=16), nullable=False),
        sa.Column("raised_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("episode_start", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Integer(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("last_event_id", sa.String(length=200), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("attention_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index("ix_alerts_status", ["status", "severity"], unique=False)

    op.create_table(
        "clinical_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key"),
    )
    with op.batch_alter_table("clinical_records", schema=None) as batch_op:
        batch_op.create_index("ix_clinical_records_patient", ["patient_id", "at"], unique=False)

    op.create_table(
        "consumer_offsets",
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition"),
    )
    op.create_table(
        "ingest_status",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("contacted_at", streams.web.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("caught_up_at", streams.web.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lag", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "lab_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("analyte", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("comparator", sa.String(length=2), nullable=True),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("collected_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resulted_at", streams.web.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("accession", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("detected", sa.Boolean(), nullable=True),
        sa.Column("sensitivity", sa.Float(), nullable=True),
        sa.Column("kafka_partition", sa.Integer(), nullable=False),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key"),
    )
    with op.batch_alter_table("lab_results", schema=None) as batch_op:
        batch_op.create_index(
            "ix_lab_results_patient", ["patient_id", "analyte", "collected_at"], unique=False
        )

    op.create_table(
        "patients",
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("infused_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("infusion", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "web_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", streams.web.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )


def downgrade() -> None:
    op.drop_table("web_sessions")
    op.drop_table("web_meta")
    op.drop_table("patients")
    with op.batch_alter_table("lab_results", schema=None) as batch_op:
        batch_op.drop_index("ix_lab_results_patient")

    op.drop_table("lab_results")
    op.drop_table("ingest_status")
    op.drop_table("consumer_offsets")
    with op.batch_alter_table("clinical_records", schema=None) as batch_op:
        batch_op.drop_index("ix_clinical_records_patient")

    op.drop_table("clinical_records")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_status")
        batch_op.drop_index(batch_op.f("ix_alerts_patient_id"))

    op.drop_table("alerts")
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_events_patient_id"))
        batch_op.drop_index("ix_alert_events_alert")

    op.drop_table("alert_events")
    with op.batch_alter_table("acks", schema=None) as batch_op:
        batch_op.drop_index("ix_acks_alert")

    op.drop_table("acks")
    with op.batch_alter_table("ack_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_ack_outbox_pending")
        batch_op.drop_index(batch_op.f("ix_ack_outbox_alert_id"))

    op.drop_table("ack_outbox")
