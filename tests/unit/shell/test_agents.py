"""The monitor agent under Faust's ``agent.test_context()`` (no broker): output topics patched.

Every test builds its own app (``create_app``), so tables and metrics start empty.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from schemas.alert import AlertEvent
from schemas.deadletter import DeadLetter
from streams import synthetic
from streams.pipeline.store import unpack
from streams.settings import Settings
from streams.shell.app import CarwatchApp, create_app


@dataclass
class Harness:
    app: CarwatchApp
    agent: Any
    alerts: mock.MagicMock
    deadletters: mock.MagicMock

    async def put(self, record: dict[str, Any] | bytes, key: bytes | None = None) -> Any:
        value = record if isinstance(record, bytes) else json.dumps(record).encode()
        if key is None and isinstance(record, dict):
            key = str(record["patient_id"]).encode()
        await self.agent.put(value, key=key)
        return self.agent.results[max(self.agent.results)]

    def sent_alerts(self) -> list[tuple[bytes, AlertEvent]]:
        return [
            (c.kwargs["key"], AlertEvent.model_validate_json(c.kwargs["value"]))
            for c in self.alerts.call_args_list
        ]

    def sent_deadletters(self) -> list[tuple[bytes | None, DeadLetter]]:
        return [
            (c.kwargs["key"], DeadLetter.model_validate_json(c.kwargs["value"]))
            for c in self.deadletters.call_args_list
        ]


def acknowledged(**kwargs: Any) -> "asyncio.Future[None]":
    """What a patched ``send_soon`` returns: a message the broker has acknowledged."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


@pytest.fixture
def app(tmp_path: Any) -> CarwatchApp:
    return create_app(Settings(app_id=f"ut-{uuid.uuid4().hex[:8]}", data_dir=tmp_path))


@pytest.fixture
async def harness(app: CarwatchApp) -> AsyncIterator[Harness]:
    topics = app.shell_topics
    with (
        mock.patch.object(topics.alerts, "send_soon", side_effect=acknowledged) as alerts,
        mock.patch.object(topics.deadletter, "send_soon", side_effect=acknowledged) as deadletters,
    ):
        async with app.pipeline.agent.test_context() as agent:
            yield Harness(app, agent, alerts, deadletters)


def sample(harness: Harness, name: str, **labels: str) -> float:
    return harness.app.pipeline.registry.get_sample_value(name, labels) or 0.0


def patient_id() -> str:
    return f"UT-{uuid.uuid4().hex[:8]}"


async def test_enrolled_patient_raises_alerts_keyed_by_patient(harness: Harness) -> None:
    pid = patient_id()
    records = synthetic.patient("mrd_positive", pid, datetime.now(UTC))
    before = sample(
        harness,
        "carwatch_alert_events_total",
        rule="mrd_positive",
        severity="critical",
        action="raised",
    )
    started = datetime.now(UTC)
    for record in records:
        await harness.put(record)

    sent = harness.sent_alerts()
    assert [(a.rule.value, a.action.value) for _, a in sent] == [
        ("mrd_positive", "raised"),
        ("hct_consolidation", "raised"),
    ]
    assert all(key == pid.encode() for key, _ in sent)
    # decided_at is the worker's wall clock, not the record's resulted_at
    assert all(a.decided_at >= started - timedelta(seconds=1) for _, a in sent)
    state = unpack(harness.app.patient_state[pid.encode()])
    assert state.enrollment is not None and len(state.alerts) == 2
    after = sample(
        harness,
        "carwatch_alert_events_total",
        rule="mrd_positive",
        severity="critical",
        action="raised",
    )
    assert after - before == 1
    assert sample(harness, "carwatch_active_alerts", rule="mrd_positive", severity="critical") >= 1


async def test_not_enrolled_results_are_counted_and_never_stored(harness: Harness) -> None:
    before = sample(harness, "carwatch_results_total", analyte="anc", outcome="not_enrolled")
    record = next(synthetic.hospital_labs(1, seed=11))
    record["analyte"], record["unit"] = "anc", "/uL"
    pid = patient_id()
    record["patient_id"] = pid
    out = await harness.put(record)

    assert out.outcomes["not_enrolled"] == 1
    assert pid.encode() not in harness.app.patient_state
    assert harness.sent_alerts() == [] and harness.sent_deadletters() == []
    assert (
        sample(harness, "carwatch_results_total", analyte="anc", outcome="not_enrolled") - before
        == 1
    )


async def test_malformed_input_goes_to_the_dead_letter_topic(harness: Harness) -> None:
    before = sample(harness, "carwatch_rejected_total", reason="malformed_json")
    await harness.put(b"{not json", key=b"whoever")
    pid = patient_id()
    await harness.put(
        {
            "type": "lab_result",
            "patient_id": pid,
            "analyte": "igg",
            "value": 5,
            "unit": "bushels",
            "collected_at": "2026-01-05T08:00:00Z",
        }
    )
    letters = harness.sent_deadletters()
    assert [(key, letter.reason.value) for key, letter in letters] == [
        (None, "malformed_json"),
        (pid.encode(), "unknown_unit"),
    ]
    assert letters[0][1].raw == "{not json"
    assert sample(harness, "carwatch_rejected_total", reason="malformed_json") - before == 1
    assert sample(harness, "carwatch_results_total", analyte="igg", outcome="rejected") >= 1


async def test_an_engine_failure_dead_letters_the_record_and_keeps_going(
    harness: Harness,
) -> None:
    pid = patient_id()
    now = datetime.now(UTC)
    records = synthetic.patient("igg_decline", pid, now)
    await harness.put(records[0])  # infusion
    real_apply_all = __import__("streams.pipeline.monitor", fromlist=["apply_all"]).apply_all

    def flaky(state: Any, events: Any, policy: Any) -> Any:
        if any(getattr(e, "accession", None) == records[1]["accession"] for e in events):
            raise RuntimeError("boom")
        return real_apply_all(state, events, policy)

    with mock.patch("streams.pipeline.monitor.apply_all", flaky):
        out = await harness.put(records[1])
    assert out.outcomes["rejected"] == 1
    ((_, letter),) = harness.sent_deadletters()
    assert (
        letter.reason.value == "processing_error" and "internal error" in letter.details[0].message
    )
    for record in records[2:]:
        await harness.put(record)
    assert ("hypogammaglobulinemia", "raised") in [
        (a.rule.value, a.action.value) for _, a in harness.sent_alerts()
    ]
