"""An alert keeps its id for life (docs/architecture.md): fixed when it is raised and stored with the
open alert, carried by every later event of that alert whatever the policy then says.

The worker raises alerts under one policy, stops, and restarts under another that changes an
unrelated setting, the declared version and the thresholds of the very rules whose alerts are
open; the alerts' later events (updated, resolved) must carry the ids they were raised with,
and say under which policy they were decided."""

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams import synthetic
from streams.core.policy import DEFAULT_POLICY
from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import InRecord, Monitor
from streams.pipeline.store import DictStore, PatientStates
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

#: Stories whose alert is raised early and updated or resolved later.
STORIES = ("igg_decline", "prolonged_neutropenia", "iec_hs")
LATER_POLICY = """\
version = "site-2026.2"
# unrelated to every open alert
history_window_days = 800
bca_cd19_pct_threshold = 2.0
# the open alerts' own rules, changed without changing these stories' course
igg_threshold_mg_dl = 450.0
anc_neutropenia_per_ul = 600.0
"""


def first_alert(records: list[dict[str, Any]]) -> int:
    """How many of a patient's records it takes to raise the first alert (default policy)."""
    monitor = Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))
    states = PatientStates(DictStore())
    for n, record in enumerate(records, start=1):
        line = json.dumps(record).encode()
        out = monitor.process([InRecord(None, line, None, 0, n, None)], states)
        out.persist(states)
        if out.alert_events:
            return n
    raise AssertionError("the story raises nothing")


def alerts(pipeline: Pipeline, expect: int) -> list[dict[str, Any]]:
    found = pipeline.read(pipeline.alerts, timeout=30, expect=expect)
    found += pipeline.read(pipeline.alerts, timeout=2)[len(found) :]
    return [json.loads(r.value) for r in found]


def test_open_alerts_keep_their_ids_across_a_policy_change_and_a_restart(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    patients = {
        f"AID-{n}-{story}": synthetic.patient(story, f"AID-{n}-{story}", now)
        for n in range(2)
        for story in STORIES
    }
    # the first worker sees each story up to its first alert ...
    heads = {pid: first_alert(records) for pid, records in patients.items()}
    first = pipeline.start_worker()
    sent = 0
    for pid, records in patients.items():
        sent = pipeline.feed_in_order(
            [json.dumps(r).encode() for r in records[: heads[pid]]], first, sent
        )
    pipeline.wait_consumed(first, sent)
    before = alerts(pipeline, len(heads))
    opened = {(a["patient_id"], a["rule"]): a for a in before if a["action"] == "raised"}
    assert {pid for pid, _ in opened} == set(patients)
    assert first.stop() == 0

    # ... and a worker under another policy sees the rest
    policy = tmp_path / "later.toml"
    policy.write_text(LATER_POLICY)
    second = pipeline.start_worker(CARWATCH_POLICY_FILE=str(policy))
    sent = 0
    for pid, records in patients.items():
        rest = [json.dumps(r).encode() for r in records[heads[pid] :]]
        sent = pipeline.feed_in_order(rest, second, sent)
    pipeline.wait_consumed(second, sent)
    later = [a for a in alerts(pipeline, len(before) + len(opened)) if a not in before]

    followed: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in later:
        key = (event["patient_id"], event["rule"])
        if key in opened and event["action"] != "raised":
            followed[key].append(event)
    # every story's alert was updated or resolved after the restart ...
    assert set(followed) == set(opened), sorted(set(opened) - set(followed))
    for key, events in followed.items():
        raised = opened[key]
        for event in events:
            # ... under its original id, decided under the new policy
            assert event["alert_id"] == raised["alert_id"], (key, event["action"])
            assert event["policy_version"].startswith("site-2026.2"), event["policy_version"]
        assert raised["policy_version"] != events[0]["policy_version"]
    # no open alert was raised a second time under a new id
    assert not [
        e for e in later if (e["patient_id"], e["rule"]) in opened and e["action"] == "raised"
    ]
    assert second.stop() == 0
