"""The read model applies topic records idempotently and stores only monitored patients."""

from typing import Any

from sqlalchemy import func, select

from schemas.alert import AlertEvent
from schemas.vocab import AlertAction, Severity
from streams.testing import Timeline
from streams.web.db import AlertEventRow, AlertRow, ClinicalRecord, Database, LabRow, Patient
from streams.web.readmodel import Source
from tests.unit.web.webtools import Feed, apply_all, story


def count(db: Database, table: Any) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_results_of_a_patient_never_infused_leave_no_trace(db: Database, feed: Feed) -> None:
    t = Timeline("P-other").igg(3, 350).event("ivig_given", 4)
    assert apply_all(db, feed.wire(t.events)) == ["not_enrolled", "not_enrolled"]
    assert count(db, LabRow) == count(db, ClinicalRecord) == count(db, Patient) == 0


def test_a_redelivered_or_resent_result_is_stored_once(db: Database, feed: Feed) -> None:
    t = Timeline("P1").infusion().igg(30, 350)
    records = feed.wire(t.events)
    assert apply_all(db, records) == ["applied", "applied"]
    assert apply_all(db, records) == ["duplicate", "duplicate"]
    resent = t.events[1].model_copy(update={"resulted_at": t.events[1].collected_at})
    assert apply_all(db, feed.wire([resent])) == ["duplicate"]
    assert count(db, LabRow) == 1


def test_results_are_normalised_like_the_worker_does(db: Database, feed: Feed) -> None:
    t = Timeline("P1").infusion().lab("igg", 30, 3.5, unit="g/L").lab("crp", 30, 4, unit="kg")
    assert apply_all(db, feed.wire(t.events)) == ["applied", "applied", "rejected"]
    with db.read() as session:
        row = session.scalars(select(LabRow)).one()
    assert (row.analyte, row.value, row.unit) == ("igg", 350, "mg/dL")


def test_a_correction_is_kept_beside_the_value_it_corrects(db: Database, feed: Feed) -> None:
    t = Timeline("P1").infusion().igg(30, 350, accession="A1")
    t.igg(30, 450, accession="A1", status="corrected")
    apply_all(db, feed.wire(t.events))
    with db.read() as session:
        rows = session.scalars(select(LabRow).order_by(LabRow.kafka_offset)).all()
    assert [(r.value, r.status) for r in rows] == [(350, "final"), (450, "corrected")]


def test_a_later_infusion_record_replaces_the_enrollment(db: Database, feed: Feed) -> None:
    first = Timeline("P1").infusion(day=0).events
    moved = Timeline("P1").infusion(day=1).events
    assert apply_all(db, feed.wire(first + first + moved)) == ["applied", "duplicate", "applied"]
    with db.read() as session:
        patient = session.get(Patient, "P1")
    assert patient is not None and patient.infused_at == moved[0].infused_at


def test_unreadable_alert_and_ack_records_become_dead_letters(db: Database, feed: Feed) -> None:
    from streams.core.policy import DEFAULT_POLICY
    from streams.web.readmodel import apply_record

    with db.write() as session:
        results = [
            apply_record(session, feed.record(source, b'{"alert_id": 1'), DEFAULT_POLICY)
            for source in (Source.ALERTS, Source.ACKS, Source.LABS)
        ]
    assert [r.outcome.value for r in results] == ["rejected"] * 3
    letters = [r.dead_letter for r in results]
    assert letters[2] is None  # the worker dead-letters its own inputs
    assert letters[0] is not None and letters[0].reason.value == "malformed_json"
    assert letters[0].location == "carwatch.alerts[0]@0"
    assert letters[1] is not None and letters[1].source == "carwatch.acks"


def _variant(alert: AlertEvent, n: int, action: AlertAction, severity: Severity) -> AlertEvent:
    return alert.model_copy(
        update={"event_id": f"{alert.alert_id}:{n}", "action": action, "severity": severity}
    )


def test_attention_follows_raises_escalations_and_reopenings(db: Database, feed: Feed) -> None:
    _, alerts = story()
    raised = alerts[0]
    lifecycle = [
        raised,
        _variant(raised, 1, AlertAction.UPDATED, Severity.WARNING),  # new evidence only
        _variant(raised, 2, AlertAction.UPDATED, Severity.CRITICAL),  # escalation
        _variant(raised, 3, AlertAction.UPDATED, Severity.WARNING),  # de-escalation
        _variant(raised, 4, AlertAction.RESOLVED, Severity.WARNING),
        _variant(raised, 5, AlertAction.UPDATED, Severity.WARNING),  # re-opened
    ]
    attention, statuses = [], []
    for event in lifecycle:
        apply_all(db, feed.alerts([event]))
        with db.read() as session:
            row = session.get(AlertRow, raised.alert_id)
            assert row is not None
            attention.append(row.attention_seq)
            statuses.append(row.status)
    assert attention == [1, 1, 3, 3, 3, 6]
    assert statuses == ["open", "open", "open", "open", "resolved", "open"]
    assert apply_all(db, feed.alerts(lifecycle)) == ["duplicate"] * len(lifecycle)
    assert count(db, AlertEventRow) == len(lifecycle)


def test_every_read_outcome_is_a_known_metric_label_value() -> None:
    from streams.metrics import ALLOWED_LABEL_VALUES, READMODEL_OUTCOMES
    from streams.web.readmodel import ReadOutcome

    assert tuple(o.value for o in ReadOutcome) == READMODEL_OUTCOMES
    assert set(READMODEL_OUTCOMES) <= ALLOWED_LABEL_VALUES["outcome"]
