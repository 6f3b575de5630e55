"""The monitor agent under Faust's ``agent.test_context()`` (no broker): output topics patched.

Tables are module-level, so every test uses its own patient ids.
"""

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
from streams.pipeline.state_codec import decode_state
from streams.shell.app import alerts_topic, deadletter_topic, patient_state, pipeline


@dataclass
class Harness:
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


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    with (
        mock.patch.object(alerts_topic, "send_soon") as alerts,
        mock.patch.object(deadletter_topic, "send_soon") as deadletters,
    ):
        async with pipeline.agent.test_context() as agent:
            yield Harness(agent, alerts, deadletters)


def sample(name: str, **labels: str) -> float:
    return pipeline.registry.get_sample_value(name, labels) or 0.0


def patient_id() -> str:
    return f"UT-{uuid.uuid4().hex[:8]}"


async def test_enrolled_patient_raises_alerts_keyed_by_patient(harness: Harness) -> None:
    pid = patient_id()
    records = synthetic.patient("mrd_positive", pid, datetime.now(UTC))
    before = sample(
        "carwatch_alert_events_total", rule="mrd_positive", severity="critical", action="raised"
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
    state = decode_state(patient_state[pid.encode()])
    assert state.enrollment is not None and len(state.alerts) == 2
    after = sample(
        "carwatch_alert_events_total", rule="mrd_positive", severity="critical", action="raised"
    )
    assert after - before == 1
    assert sample("carwatch_active_alerts", rule="mrd_positive", severity="critical") >= 1


async def test_not_enrolled_results_are_counted_and_never_stored(harness: Harness) -> None:
    before = sample("carwatch_results_total", analyte="anc", outcome="not_enrolled")
    record = next(synthetic.hospital_labs(1, seed=11))
    record["analyte"], record["unit"] = "anc", "/uL"
    pid = patient_id()
    record["patient_id"] = pid
    out = await harness.put(record)

    assert out.outcomes["not_enrolled"] == 1
    assert pid.encode() not in patient_state
    assert harness.sent_alerts() == [] and harness.sent_deadletters() == []
    assert sample("carwatch_results_total", analyte="anc", outcome="not_enrolled") - before == 1


async def test_malformed_input_goes_to_the_dead_letter_topic(harness: Harness) -> None:
    before = sample("carwatch_rejected_total", reason="malformed_json")
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
    assert sample("carwatch_rejected_total", reason="malformed_json") - before == 1
    assert sample("carwatch_results_total", analyte="igg", outcome="rejected") >= 1


async def test_an_engine_failure_dead_letters_the_record_and_keeps_going(
    harness: Harness,
) -> None:
    pid = patient_id()
    now = datetime.now(UTC)
    records = synthetic.patient("igg_decline", pid, now)
    await harness.put(records[0])  # infusion
    monitor = __import__("streams.pipeline.monitor", fromlist=["apply"])
    real_apply, real_apply_all = monitor.apply, monitor.apply_all

    def poisoned(event: Any) -> bool:
        return getattr(event, "accession", None) == records[1]["accession"]

    def flaky(state: Any, event: Any, policy: Any) -> Any:
        if poisoned(event):
            raise RuntimeError("boom")
        return real_apply(state, event, policy)

    def flaky_all(state: Any, events: Any, policy: Any) -> Any:
        if any(poisoned(event) for event in events):
            raise RuntimeError("boom")
        return real_apply_all(state, events, policy)

    with (
        mock.patch("streams.pipeline.monitor.apply", flaky),
        mock.patch("streams.pipeline.monitor.apply_all", flaky_all),
    ):
        out = await harness.put(records[1])
    assert out.outcomes["rejected"] == 1
    ((_, letter),) = harness.sent_deadletters()
    assert letter.reason.value == "invalid_field" and "internal error" in letter.details[0].message
    for record in records[2:]:
        await harness.put(record)
    assert ("hypogammaglobulinemia", "raised") in [
        (a.rule.value, a.action.value) for _, a in harness.sent_alerts()
    ]


async def test_a_batch_merges_the_two_topics_by_timestamp() -> None:
    """Records of one patient from both topics in one batch: infusion first (earlier stamp)."""
    from prometheus_client import CollectorRegistry

    from streams.core.policy import DEFAULT_POLICY
    from streams.metrics import PipelineMetrics
    from streams.pipeline.monitor import CLINICAL_TOPIC, LABS, InRecord, Monitor
    from streams.pipeline.store import DictStore

    pid = patient_id()
    records = synthetic.patient("mrd_positive", pid, datetime.now(UTC))
    infusion, labs = records[0], records[1:]
    batch = [
        InRecord(pid.encode(), json.dumps(r).encode(), LABS, 0, i, 100.0 + i)
        for i, r in enumerate(labs, start=1)
    ]
    # the clinical record arrives last in the batch but was sent first
    batch.append(InRecord(pid.encode(), json.dumps(infusion).encode(), CLINICAL_TOPIC, 0, 0, 100.0))
    monitor = Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))
    store = DictStore()
    out = monitor.process(batch, store)
    assert out.outcomes["not_enrolled"] == 0
    assert out.outcomes["accepted"] == len(records)
    assert [a.rule.value for a in out.alert_events] == ["mrd_positive", "hct_consolidation"]


def test_states_are_persisted_only_after_the_alerts_they_record() -> None:
    """A state saying "announced" must never reach the changelog before its alert is sent."""
    from prometheus_client import CollectorRegistry

    from streams.core.policy import DEFAULT_POLICY
    from streams.metrics import PipelineMetrics
    from streams.pipeline.monitor import CLINICAL_TOPIC, LABS, InRecord, Monitor
    from streams.pipeline.state_codec import decode_state
    from streams.pipeline.store import DictStore

    pid = patient_id()
    records = synthetic.patient("mrd_positive", pid, datetime.now(UTC))
    batch = [InRecord(pid.encode(), json.dumps(records[0]).encode(), CLINICAL_TOPIC, 0, 0, 100.0)]
    batch += [
        InRecord(pid.encode(), json.dumps(r).encode(), LABS, 0, i, 100.0 + i)
        for i, r in enumerate(records[1:], start=1)
    ]
    monitor = Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))
    store = DictStore()
    out = monitor.process(batch, store)
    assert out.alerts and store.data == {}  # nothing persisted while the alerts are unsent
    out.persist(store)
    state = decode_state(store.data[pid.encode()])
    assert {a.rule.value for a in state.alerts.values()} == {"mrd_positive", "hct_consolidation"}
