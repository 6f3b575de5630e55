"""The worker against a real broker: same alerts as ``carwatch replay``, restarts, dead letters,
metrics. Each test runs ``carwatch worker`` as a subprocess on its own topics."""

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams import synthetic
from streams.metrics import ALLOWED_LABEL_VALUES
from tests.integration.conftest import REPO, Pipeline, wait_for

pytestmark = pytest.mark.integration

SCENARIOS = sorted(
    p
    for p in (REPO / "tests" / "data" / "scenarios").glob("*.ndjson")
    if not p.name.endswith(".expected.ndjson")
)
OUTCOMES = (
    "accepted",
    "rejected",
    "unmapped",
    "not_enrolled",
    "duplicate",
    "superseded",
    "unknown_accession",
)


def replay(path: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Alert events and outcome counts of ``carwatch replay PATH`` (no --now: no tick)."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    alerts = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    summary = done.stderr.strip().splitlines()[-1]
    counts = {
        "accepted": _count(summary, "accepted"),
        "rejected": _count(summary, "rejected"),
        "unmapped": _count(summary, "unmapped"),
        "not_enrolled": _count(summary, "not enrolled"),
        "duplicate": _count(summary, "duplicates"),
        "superseded": _count(summary, "superseded"),
        "unknown_accession": _count(summary, "unknown accession"),
    }
    return alerts, counts


def _count(summary: str, label: str) -> int:
    match = re.search(rf"\b{label} (\d+)", summary)
    assert match, f"{label!r} not in replay summary: {summary}"
    return int(match.group(1))


def by_patient(alerts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per patient, the events in order, without ``decided_at`` (wall clock in the worker)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        grouped[alert["patient_id"]].append({k: v for k, v in alert.items() if k != "decided_at"})
    return dict(grouped)


DECISION = ("alert_id", "event_id", "rule", "action", "severity", "event_time", "episode_start")


def decisions(alerts: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """Per patient, in order, what was decided (not how the texts put it)."""
    return {
        patient: [tuple(event[k] for k in DECISION) for event in events]
        for patient, events in by_patient(alerts).items()
    }


def alert_events(pipeline: Pipeline, expect: int) -> list[dict[str, Any]]:
    records = pipeline.read(pipeline.alerts, timeout=30, expect=expect)
    # a short second look: nothing more may arrive
    records += pipeline.read(pipeline.alerts, timeout=2)[len(records) :]
    return [json.loads(r.value) for r in records]


def test_scenarios_give_the_same_alerts_as_replay(pipeline: Pipeline) -> None:
    assert SCENARIOS, "no scenario files in tests/data/scenarios"
    expected: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    lines: list[bytes] = []
    for path in SCENARIOS:
        alerts, outcome_counts = replay(path)
        expected += alerts
        counts.update(outcome_counts)
        lines += [line for line in path.read_bytes().splitlines() if line.strip()]

    worker = pipeline.start_worker()
    sent = pipeline.feed_in_order(lines, worker)
    pipeline.wait_consumed(worker, sent)
    produced = alert_events(pipeline, expect=len(expected))

    assert by_patient(produced) == by_patient(expected)
    assert len(produced) == len(expected)  # nothing sent twice

    # (d) the worker's counts match what it processed, per outcome
    wait_for(
        lambda: (
            sum(worker.total("carwatch_results_total", outcome=o) for o in OUTCOMES)
            >= sum(counts.values())
        ),
        10,
        "the results counter",
    )
    for outcome in OUTCOMES:
        assert worker.total("carwatch_results_total", outcome=outcome) == counts[outcome], outcome
    assert worker.total("carwatch_messages_consumed_total") == sent
    assert worker.total("carwatch_rejected_total") == counts["rejected"]
    assert worker.total("carwatch_deadletter_messages_total") == counts["rejected"]
    assert worker.total("carwatch_alert_events_total") == len(expected)
    _assert_no_phi(worker.scrape() or "", {a["patient_id"] for a in expected} | _ids(lines))
    assert worker.stop() == 0


def _ids(lines: list[bytes]) -> set[str]:
    found = set()
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("patient_id"), str):
            found.add(obj["patient_id"].strip())
    return {i for i in found if i}


def _assert_no_phi(scrape: str, patient_ids: set[str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert patient_ids
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name == "le":  # histogram bucket bounds
                    float(value)
                    continue
                assert name in ALLOWED_LABEL_VALUES, f"unexpected label {name} in {sample.name}"
                assert value in ALLOWED_LABEL_VALUES[name], f"{sample.name}{{{name}={value!r}}}"
    for patient_id in patient_ids:
        assert patient_id not in scrape


def test_restart_recovers_state_without_lost_or_repeated_alerts(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    # no mid-stream clinical events: after the infusions every record is a lab result, so the
    # order of the two topics cannot matter while the worker is down
    stories = tuple(t for t in synthetic.TRAJECTORIES if t != "igg_decline")
    records = synthetic.cohort(24, now, prefix="RST", trajectories=stories)
    path = tmp_path / "cohort.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    expected, _ = replay(path)
    assert len(expected) >= 20
    lines = [json.dumps(r).encode() for r in records]
    infusions = sum(1 for r in records if r["type"] == "infusion")
    assert all(r["type"] == "infusion" for r in records[:infusions])

    first = pipeline.start_worker()
    head = infusions + (len(lines) - infusions) // 3
    pipeline.feed_in_order(lines[:head], first)
    pipeline.wait_consumed(first, head)
    middle = head + (len(lines) - head) // 2
    for line in lines[head:middle]:
        pipeline.send(line)
    pipeline.producer.flush(30)
    assert first.stop() == 0  # SIGTERM while the middle part is in flight

    second = pipeline.start_worker()
    for line in lines[middle:]:
        pipeline.send(line)
    pipeline.producer.flush(30)
    produced = alert_events(pipeline, expect=len(expected))

    ids = Counter(a["event_id"] for a in produced)
    assert [i for i, n in ids.items() if n > 1] == []  # no alert event twice
    # none missing, same order, same decisions. (Texts may differ: a specimen's results split
    # across the worker's batches are applied as they come, so an alert's context can show less
    # of the specimen than replay, which sees it whole.)
    assert decisions(produced) == decisions(expected)
    # the second worker rebuilt every patient from the changelog
    wait_for(lambda: second.total("carwatch_patients_monitored") == 24, 20, "24 patients monitored")
    assert second.stop() == 0


def test_malformed_messages_are_dead_lettered_and_the_worker_keeps_running(
    pipeline: Pipeline,
) -> None:
    worker = pipeline.start_worker()
    bad = [
        b"this is not json",
        b'{"type": "lab_result"}',
        b'{"type": "ultrasound", "patient_id": "DL-1"}',
        b'{"type": "lab_result", "patient_id": "DL-2", "analyte": "anc", "value": 300,'
        b' "unit": "furlongs", "collected_at": "2026-01-05T08:00:00Z"}',
        b'{"type": "lab_result", "patient_id": "DL-3", "analyte": "anc", "value": 300,'
        b' "unit": "/uL", "collected_at": "2026-01-05T08:00:00"}',
        b'{"type": "infusion", "patient_id": "DL-4", "infused_at": "2026-01-01T10:00:00Z",'
        b' "risk_factors": ["bad_luck"]}',
    ]
    for line in bad:
        pipeline.send(line)
    pipeline.producer.send(pipeline.labs, value=None, key=b"DL-5")  # a tombstone-like message
    pipeline.producer.flush(30)
    letters = pipeline.read(pipeline.deadletter, timeout=30, expect=len(bad) + 1)
    assert len(letters) == len(bad) + 1
    decoded = [json.loads(r.value) for r in letters]
    reasons = Counter(d["reason"] for d in decoded)
    assert reasons == {
        "malformed_json": 2,
        "missing_field": 1,
        "unknown_type": 1,
        "unknown_unit": 1,
        "naive_datetime": 1,
        "unknown_vocabulary": 1,
    }
    for record, letter in zip(letters, decoded, strict=True):
        assert letter["details"] and letter["source"] in ("carwatch.labs", "carwatch.clinical")
        if letter["raw"].startswith("{") and "DL-" in letter["raw"]:
            assert record.key is not None and record.key.startswith(b"DL-")
    assert {d["raw"] for d in decoded} >= {line.decode() for line in bad}
    assert worker.alive()

    # ... and still processes good records
    good = synthetic.patient("mrd_positive", "DL-OK", datetime(2026, 11, 24, tzinfo=UTC))
    sent = pipeline.feed_in_order([json.dumps(r).encode() for r in good], worker, len(bad) + 1)
    pipeline.wait_consumed(worker, sent)
    produced = alert_events(pipeline, expect=2)
    assert {(a["rule"], a["action"]) for a in produced} == {
        ("mrd_positive", "raised"),
        ("hct_consolidation", "raised"),
    }
    assert worker.total("carwatch_deadletter_messages_total") == len(bad) + 1
    assert worker.stop() == 0


def test_topics_are_created_with_their_retention(broker: Any) -> None:
    """The alerts topic keeps every event (the web's rebuild re-reads it); the message store
    keeps raw messages for ``inbound_retention_hours`` -- as the broker reports them."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    from streams.pipeline.topics import ensure_topics
    from streams.settings import Settings

    suffix = datetime.now(UTC).strftime("%H%M%S%f")
    settings = Settings(
        broker_url=broker.url,
        alerts_topic=f"retention-alerts-{suffix}",
        inbound_topic=f"retention-inbound-{suffix}",
        inbound_retention_hours=2,
    )
    ensure_topics(settings, [settings.alerts_topic, settings.inbound_topic], partitions=1)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        described = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name)
                for name in (settings.alerts_topic, settings.inbound_topic)
            ]
        )
    finally:
        admin.close()
    topics = next(iter(described.values()))
    retention = {name: configs["retention.ms"]["value"] for name, configs in topics.items()}
    assert retention == {settings.alerts_topic: "-1", settings.inbound_topic: str(2 * 3600 * 1000)}
