"""Every ops alert rule and dashboard panel selects series that a running process exports.

Issue #14: rules that select a metric under a job whose process does not export it can never
fire, and promtool unit tests that invent those series prove nothing. So this test starts the
real long-running processes -- the worker against the session broker, an MLLP listener, a FHIR
gateway (each twice: once healthy, once pointed at a port where no broker listens, so the broker
failure paths run too) and the webhook deliverer with one accepting and one refusing receiver --
drives traffic through each, and lets a real Prometheus scrape them with the shipped
``deploy/prometheus/prometheus.yml`` (its jobs, targets replaced by the test's addresses).

The (metric, job) pairs and their label names come from Prometheus' ``/api/v1/series``: what was
really scraped, under the job the shipped config gives it. Every selector of every alerting rule
and every dashboard panel must select pairs from that set, with labels those series have
(``tests/ops/promql.py``). Then the alerts this traffic must make pending are pending, with their
absolute runbook links, and no label value of any series is outside the bounded vocabularies.

``carwatch web`` (job ``carwatch-web``) belongs here as soon as the command exists: see
``start_web``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from hl7.client import MLLPClient

from streams import synthetic
from streams.cli import cli
from streams.metrics import ALLOWED_LABEL_VALUES, FHIR_GATEWAY, MLLP, WEBHOOK, WORKER
from tests.integration.conftest import REPO, Pipeline, free_port, wait_for
from tests.integration.promserver import (
    PROM_DIR,
    RULES,
    eventually,
    http_json,
    prometheus,
    prometheus_config,
    query,
)
from tests.ops import prombin, promql

pytestmark = [pytest.mark.integration, pytest.mark.ops]

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "carwatch.json"
DATA = REPO / "tests" / "data"
SECRET = "exported-series-secret"
#: Alerts the test's traffic makes pending at once (the rest need minutes of history).
MADE_PENDING = {
    ("CarwatchAlertDeliveryFailing", WEBHOOK.job),
    ("CarwatchListenerBrokerFailing", MLLP.job),
    ("CarwatchListenerBrokerFailing", FHIR_GATEWAY.job),
}


@dataclass
class Started:
    """One ``carwatch`` subprocess: its job, its /metrics address, where it listens."""

    job: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics: str
    listening: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start(job: str, args: list[str], log: Path, env: dict[str, str]) -> Started:
    """Run ``carwatch ARGS`` and wait (bounded) for its "metrics on" and "listening on" lines."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            cwd=REPO,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    needs_listener = job != WEBHOOK.job

    def lines() -> tuple[str, str] | None:
        text = log.read_text(errors="replace")
        if process.poll() is not None:
            raise AssertionError(f"carwatch {args[0]} exited {process.returncode}:\n{text}")
        metrics = re.search(r"metrics on http://([^/\s]+)/metrics", text)
        listening = re.search(r"listening on (?:http://)?([\d.]+:\d+)", text)
        if metrics and (listening or not needs_listener):
            return metrics.group(1), listening.group(1) if listening else ""
        return None

    metrics, listening = wait_for(lines, 60, f"carwatch {args[0]} to start")
    return Started(job, process, log, metrics, listening)


def start_web(tmp: Path, env: dict[str, str]) -> Started | None:
    """``carwatch web`` (job ``carwatch-web``, CONTRACTS.md), once the command exists.

    Until then there is no such command, no ``carwatch-web`` job in prometheus.yml and no rule or
    panel that selects its series. When the web lands, this fails on purpose: start it here
    (free metrics port, a temporary database), add its scrape job to prometheus.yml and
    monitoring.yaml, and the read-model lag alert to the rules.
    """
    if "web" not in cli.commands:
        return None
    raise AssertionError("carwatch web exists: start it here and scrape it (see the docstring)")


class Receiver:
    """A webhook receiver on loopback that answers every POST with ``status``."""

    def __init__(self, status: int) -> None:
        self.bodies: list[bytes] = []

        class Hook(BaseHTTPRequestHandler):
            def do_POST(inner) -> None:
                self.bodies.append(inner.rfile.read(int(inner.headers["Content-Length"])))
                inner.send_response(status)
                inner.end_headers()

            def log_message(inner, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def oru(control: str, unit: str = "10*9/L") -> bytes:
    """An ORU^R01 with one ANC result (``unit`` other than a known one: rejected, AE)."""
    segments = [
        f"MSH|^~\\&|LIS|LAB|CARWATCH|HOSP|20260105120000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|1||SERIES-1^^^KIDS^MR",
        "OBR|1|PL-1|ACC-SERIES-1|58410-2^CBC^LN|||20260105080000+0100",
        f"OBX|1|NM|751-8^Neutrophils^LN||0.42|{unit}|||||F",
    ]
    return ("\r".join(segments) + "\r").encode()


def mllp_ack_codes(address: str, *messages: bytes) -> list[str]:
    host, port = address.split(":")
    with MLLPClient(host, int(port)) as client:
        client.socket.settimeout(30)
        acks = [bytes(client.send_message(m)).decode(errors="replace") for m in messages]
    return [re.search(r"MSA\|(\w\w)", ack).group(1) for ack in acks]  # type: ignore[union-attr]


def fhir_status(address: str, body: bytes) -> int:
    request = urllib.request.Request(
        f"http://{address}/fhir/Observation",
        data=body,
        method="POST",
        headers={"Content-Type": "application/fhir+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    accepting, refusing = Receiver(204), Receiver(400)
    try:
        yield accepting, refusing
    finally:
        accepting.close()
        refusing.close()


def drive_the_worker(pipeline: Pipeline) -> tuple[str, Any]:
    """The worker with a small cohort (alert events) and one unreadable line (a dead letter)."""
    worker = pipeline.start_worker()
    records = synthetic.cohort(2, datetime.now(UTC), prefix="PSERIES")
    lines = [json.dumps(r).encode() for r in records] + [b"not json"]
    sent = pipeline.feed_in_order(lines, worker)
    pipeline.wait_consumed(worker, sent)
    return f"127.0.0.1:{worker.metrics_port}", worker


def start_listeners(pipeline: Pipeline, tmp: Path) -> list[Started]:
    """Each listener twice, with traffic: healthy (AA/201 and a rejection), and pointed at a
    closed port (the broker-failure path: AR/503)."""
    feed = tmp / "feed.toml"
    feed.write_text('assigning_authority = "KIDS"\n')
    env = dict(os.environ)
    started = []
    for health, broker in (
        ("ok", pipeline.broker.url),
        ("down", f"kafka://127.0.0.1:{free_port()}"),
    ):
        common = [
            *("--port", "0", "--metrics-port", "0", "--broker", broker),
            *("--labs-topic", pipeline.labs, "--deadletter-topic", pipeline.deadletter),
            *("--publish-timeout", "1"),
        ]
        mllp = start(
            MLLP.job,
            ["mllp", *common, "--feed-config", str(feed)],
            tmp / f"mllp-{health}.log",
            env,
        )
        fhir = start(FHIR_GATEWAY.job, ["fhir-gateway", *common], tmp / f"fhir-{health}.log", env)
        started += [mllp, fhir]
        observation = (DATA / "fhir" / "observation_igg.json").read_bytes()
        if health == "ok":
            assert mllp_ack_codes(mllp.listening, oru("S1"), oru("S2", unit="furlongs")) == [
                "AA",
                "AE",
            ]
            assert fhir_status(fhir.listening, observation) == 201
            assert fhir_status(fhir.listening, b"not json") == 400
        else:
            assert mllp_ack_codes(mllp.listening, oru("S3")) == ["AR"]
            assert fhir_status(fhir.listening, observation) == 503
    return started


def start_deliverer(pipeline: Pipeline, tmp: Path, receivers: tuple[Receiver, Receiver]) -> Started:
    accepting, refusing = receivers
    env = {
        **os.environ,
        "CARWATCH_BROKER_URL": pipeline.broker.url,
        "CARWATCH_ALERTS_TOPIC": pipeline.alerts,
        "CARWATCH_WEBHOOK_SECRET": SECRET,
    }
    args = ["alerts", "webhook", "--url", accepting.url, "--url", refusing.url]
    args += ["--group", f"{pipeline.name}-hooks", "--metrics-port", "0"]
    deliverer = start(WEBHOOK.job, args, tmp / "webhook.log", env)
    wait_for(lambda: accepting.bodies and refusing.bodies, 60, "deliveries to both receivers")
    return deliverer


def series_of(base: str) -> list[dict[str, str]]:
    match = '{__name__=~"carwatch_.+|up|process_start_time_seconds"}'
    answer = http_json(f"{base}/api/v1/series?" + urllib.parse.urlencode({"match[]": match}))
    assert answer["status"] == "success", answer
    return list(answer["data"])


def rule_and_panel_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [(f"rule {r['alert']}", r["expr"]) for g in groups for r in g["rules"] if "alert" in r]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r}", target["expr"]))
    return exprs


def test_every_rule_and_panel_selects_series_a_running_process_exports(
    pipeline: Pipeline, tmp_path: Path, receivers: tuple[Receiver, Receiver]
) -> None:
    binary = prombin.require("prometheus")
    assert start_web(tmp_path, dict(os.environ)) is None
    started: list[Started] = []
    try:
        worker_address, worker = drive_the_worker(pipeline)
        started += start_listeners(pipeline, tmp_path)
        started.append(start_deliverer(pipeline, tmp_path, receivers))
        targets: dict[str, list[str]] = {WORKER.job: [worker_address]}
        for process in started:
            targets.setdefault(process.job, []).append(process.metrics)
        port = free_port()
        config = prometheus_config(tmp_path, targets, port)
        with prometheus(binary, config, port, tmp_path) as (base, log):
            expected_up = sum(len(t) for t in targets.values())
            eventually(
                "every process scraped",
                lambda: len(query(base, 'up{job=~"carwatch-.+"} == 1')) == expected_up,
                log,
            )
            # what the traffic produced is in Prometheus (nothing here needs new code paths)
            for selector in (
                'carwatch_alert_events_total{job="carwatch-worker"}',
                'carwatch_deadletter_messages_total{job="carwatch-worker"}',
                'carwatch_deadletter_messages_total{job="carwatch-mllp"}',
                'carwatch_deadletter_messages_total{job="carwatch-fhir-gateway"}',
                'carwatch_alert_deliveries_total{job="carwatch-webhook", outcome="failed"}',
            ):
                eventually(selector, lambda s=selector: query(base, s), log)
            exported = promql.Exported.from_series(series_of(base))

            problems = [
                f"{where}: {problem}"
                for where, expr in rule_and_panel_exprs()
                for problem in promql.problems(expr, exported, ALLOWED_LABEL_VALUES)
            ]
            assert not problems, "selected but exported by no running process:\n" + "\n".join(
                sorted(set(problems))
            )

            # the alerts this traffic makes pending are pending, with absolute runbook links
            base_url = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["global"][
                "external_labels"
            ]["runbook_base"]

            def pending() -> dict[tuple[str, str], str]:
                alerts = http_json(f"{base}/api/v1/alerts")["data"]["alerts"]
                return {
                    (a["labels"]["alertname"], a["labels"]["job"]): a["annotations"]["runbook_url"]
                    for a in alerts
                }

            found = eventually(
                "the alerts of the failure paths", lambda: set(pending()) >= MADE_PENDING, log
            )
            assert found
            for (name, job), url in pending().items():
                assert url == f"{base_url}#{name.lower()}", (name, job)

            # no label value outside the bounded vocabularies: no patient data in Prometheus
            for labels in series_of(base):
                for name, value in labels.items():
                    if name in ALLOWED_LABEL_VALUES:
                        assert value in ALLOWED_LABEL_VALUES[name], f"{labels['__name__']} {name}"
    finally:
        for process in started:
            process.stop()
    assert worker.stop() == 0
