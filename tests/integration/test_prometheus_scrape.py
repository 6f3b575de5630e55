"""A real Prometheus scraping a real ``carwatch worker`` that processes a synthetic cohort.

The worker runs against the session broker (``pipeline`` fixture, conftest.py); Prometheus
(Debian package ``prometheus``, located by tests/ops/prombin.py: a missing binary fails under
``CI`` and skips elsewhere) runs on 127.0.0.1 with the shipped ``deploy/prometheus/prometheus.yml``
rewritten for the test: 1 s intervals, job ``carwatch-worker`` pointed at the worker's metrics
port, the project's rules file loaded, no Alertmanager. Checked through Prometheus' HTTP API:

- ``up{job="carwatch-worker"} == 1`` for the worker's target;
- ``carwatch_results_total`` sums to what was fed (per analyte), and every series equals the
  worker's own /metrics; ``carwatch_alert_events_total`` by rule/severity/action equals
  ``carwatch replay`` of the same cohort (six clinical rules, raised/updated/resolved);
  ``carwatch_patients_monitored`` is the cohort size;
- every label value of every ``carwatch_*`` series is within ``ALLOWED_LABEL_VALUES`` (no patient
  id reached Prometheus);
- ``/api/v1/rules`` has every alert of ``carwatch.rules.yml``, evaluated, health ``ok``.

Every wait is bounded; Prometheus and the worker are stopped by the test (terminate, bounded wait,
kill).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams import synthetic
from streams.metrics import ALLOWED_LABEL_VALUES, CLINICAL
from tests.integration.conftest import REPO, Pipeline, free_port
from tests.integration.promserver import eventually, http_json, prometheus, prometheus_config, query
from tests.ops import prombin

pytestmark = [pytest.mark.integration, pytest.mark.ops]

JOB = "carwatch-worker"
RULES = REPO / "deploy" / "prometheus" / "rules" / "carwatch.rules.yml"
COHORT = 7  # one patient per synthetic trajectory
PREFIX = "PSCRAPE"
#: Clinical rules the cohort raises without the wall-clock tick (monitoring_gap needs the tick).
RULES_EXERCISED = {
    "bca_loss",
    "hypogammaglobulinemia",
    "prolonged_neutropenia",
    "iec_hs",
    "mrd_positive",
    "hct_consolidation",
}
#: Labels Prometheus adds to (or keeps on) every carwatch_* series besides the metric's own.
TARGET_LABELS = {"__name__", "job", "instance"}


# ------------------------------------------------------------------------------ helpers


def replay(path: Path) -> tuple[Counter[tuple[str, str, str]], dict[str, int]]:
    """``carwatch replay PATH`` (no tick): alert events by (rule, severity, action), and the
    summary's ``records read`` / ``accepted`` counts."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    events: Counter[tuple[str, str, str]] = Counter()
    for line in done.stdout.splitlines():
        if line.strip():
            alert = json.loads(line)
            events[(alert["rule"], alert["severity"], alert["action"])] += 1
    summary = done.stderr.strip().splitlines()[-1]
    counts = {}
    for key, label in (("read", "records read"), ("accepted", "accepted")):
        match = re.search(rf"\b{label} (\d+)", summary)
        assert match, f"{label!r} not in replay summary: {summary}"
        counts[key] = int(match.group(1))
    return events, counts


def by_labels(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    """``{(label values...): value}`` of an instant-query result."""
    found: dict[tuple[str, ...], float] = {}
    for item in result:
        key = tuple(item["metric"].get(label, "") for label in labels)
        assert key not in found, f"two series for {labels}={key}: {result}"
        found[key] = float(item["value"][1])
    return found


def worker_values(
    samples: dict[Any, float], name: str, *labels: str
) -> dict[tuple[str, ...], float]:
    """The same shape from the worker's own /metrics (``Worker.samples()``)."""
    return {
        tuple(dict(sample_labels).get(label, "") for label in labels): value
        for (sample, sample_labels), value in samples.items()
        if sample == name
    }


def analyte_label(record: dict[str, Any]) -> str:
    return str(record["analyte"]) if record["type"] == "lab_result" else CLINICAL


# -------------------------------------------------------------------------------- test


def test_prometheus_scrapes_the_worker_and_loads_the_rules(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    binary = prombin.require("prometheus")
    records = synthetic.cohort(COHORT, datetime.now(UTC), prefix=PREFIX)
    cohort_file = tmp_path / "cohort.ndjson"
    cohort_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    expected_events, replayed = replay(cohort_file)
    # an enrolled cohort fed in order: every record is accepted, the rules we count on fire
    assert replayed == {"read": len(records), "accepted": len(records)}, replayed
    assert {rule for rule, _, _ in expected_events} == RULES_EXERCISED
    assert {action for _, _, action in expected_events} >= {"raised", "resolved"}
    patient_ids = {str(r["patient_id"]) for r in records}
    assert len(patient_ids) == COHORT

    worker = pipeline.start_worker()
    target = f"127.0.0.1:{worker.metrics_port}"
    port = free_port()
    config = prometheus_config(tmp_path, {JOB: [target]}, port)
    with prometheus(binary, config, port, tmp_path) as (base, log):
        # feed while Prometheus starts scraping
        lines = [json.dumps(r).encode() for r in records]
        sent = pipeline.feed_in_order(lines, worker)
        assert sent == len(records)
        pipeline.wait_consumed(worker, sent)

        # -- the scrape target is up
        up = eventually(
            "up{job=carwatch-worker} == 1",
            lambda: query(base, f'up{{job="{JOB}"}} == 1'),
            log,
        )
        assert [u["metric"] for u in up] == [{"__name__": "up", "job": JOB, "instance": target}]

        # -- Prometheus has the worker's final counts (the worker is idle now, so they stay put)
        def caught_up() -> bool:
            results = query(base, f'sum(carwatch_results_total{{job="{JOB}"}})')
            events = query(base, f'sum(carwatch_alert_events_total{{job="{JOB}"}})')
            patients = query(base, f'carwatch_patients_monitored{{job="{JOB}"}}')
            return (
                [float(r["value"][1]) for r in results] == [sent]
                and [float(e["value"][1]) for e in events] == [expected_events.total()]
                and [float(p["value"][1]) for p in patients] == [COHORT]
            )

        eventually("Prometheus to scrape the final counts", caught_up, log)
        scraped = worker.samples()
        results = by_labels(
            query(base, f'carwatch_results_total{{job="{JOB}"}}'), "analyte", "outcome"
        )
        events = by_labels(
            query(base, f'carwatch_alert_events_total{{job="{JOB}"}}'),
            "rule",
            "severity",
            "action",
        )
        patients = query(base, f'carwatch_patients_monitored{{job="{JOB}"}}')

        # results: per analyte what was fed, all accepted; the same as the worker's /metrics
        fed = Counter((analyte_label(r), "accepted") for r in records)
        assert results == {key: float(n) for key, n in fed.items()}
        assert sum(results.values()) == sent
        assert results == worker_values(scraped, "carwatch_results_total", "analyte", "outcome")

        # alert events: exactly what replay of the cohort produces, rule by rule
        assert events == {key: float(n) for key, n in expected_events.items()}
        assert {rule for rule, _, _ in events} == RULES_EXERCISED
        assert events == worker_values(
            scraped, "carwatch_alert_events_total", "rule", "severity", "action"
        )

        assert [p["metric"] for p in patients] == [
            {"__name__": "carwatch_patients_monitored", "job": JOB, "instance": target}
        ]
        assert float(patients[0]["value"][1]) == COHORT

        # -- no label value outside the bounded vocabularies: no patient id in Prometheus
        answer = http_json(
            f"{base}/api/v1/series?"
            + urllib.parse.urlencode({"match[]": '{__name__=~"carwatch_.+"}'})
        )
        assert answer["status"] == "success", answer
        series = answer["data"]
        names = {s["__name__"] for s in series}
        assert {
            "carwatch_results_total",
            "carwatch_alert_events_total",
            "carwatch_patients_monitored",
            "carwatch_messages_consumed_total",
        } <= names
        for labels in series:
            for name, value in labels.items():
                where = f"{labels['__name__']}{{{name}={value!r}}}"
                if name in TARGET_LABELS:
                    assert name == "__name__" or value == (JOB if name == "job" else target), where
                elif name == "le":  # histogram bucket bounds
                    float(value)
                else:
                    assert name in ALLOWED_LABEL_VALUES, f"unexpected label {where}"
                    assert value in ALLOWED_LABEL_VALUES[name], where
        dumped = json.dumps(series)
        assert not [p for p in patient_ids if p in dumped]
        assert PREFIX not in dumped

        # -- the project's alert rules are loaded and evaluate without error
        shipped_groups = yaml.safe_load(RULES.read_text())["groups"]
        shipped = [r for g in shipped_groups for r in g["rules"] if "alert" in r]

        def evaluated() -> list[dict[str, Any]]:
            groups = http_json(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
            done = len(rules) == len(shipped) and all(
                not r["lastEvaluation"].startswith("0001") for r in rules
            )
            return list(groups) if done else []

        groups = eventually("every shipped alert rule evaluated", evaluated, log)
        assert sorted((g["name"], g["file"]) for g in groups) == sorted(
            (g["name"], str(RULES.resolve())) for g in shipped_groups
        )
        rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
        assert sorted((r["name"], r["labels"]["severity"]) for r in rules) == sorted(
            (r["alert"], r["labels"]["severity"]) for r in shipped
        )
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules] == [
            (r["name"], "ok", "") for r in rules
        ]
    assert worker.stop() == 0
