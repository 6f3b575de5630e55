"""Prometheus config, alert rules and Alertmanager config (issues #5, #14).

Static checks (always run): every alert carries severity/summary/description and an absolute
runbook_url built from the one configurable base, its runbook anchor exists in docs/runbook.md,
every alert has a firing and a non-firing promtool case whose input series are metrics the
process of their job exports (with its labels), every process has a scrape job with its default
port, Alertmanager's inhibitions name real alerts.

``@pytest.mark.ops`` checks run the real tools from Debian's ``prometheus`` and
``prometheus-alertmanager`` packages (``scripts/install-ops-tools.sh``): ``promtool check
config``/``check rules``/``test rules``, ``amtool check-config`` and route tests, then a real
Alertmanager (routing and inhibition) and a real Prometheus scraping a prometheus-client endpoint
with the rules loaded. A missing binary fails the test under ``CI`` and skips it elsewhere
(prombin.py). Servers listen on 127.0.0.1 only and are stopped by the test that started them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prombin
import promql
import pytest
import yaml

from streams.metrics import (
    ALLOWED_LABEL_VALUES,
    FHIR_GATEWAY,
    MLLP,
    WEB,
    WEBHOOK,
    WORKER,
    DeliveryMetrics,
    ListenerMetrics,
    PipelineMetrics,
    serve_metrics,
)
from streams.web.metrics import WebMetrics

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy/prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules/carwatch.rules.yml"
RULE_TESTS = PROM_DIR / "tests/carwatch.rules.test.yml"
AM_CONFIG = REPO / "deploy/alertmanager/alertmanager.yml"
RUNBOOK = REPO / "docs/runbook.md"

EXPECTED_ALERTS = {
    "CarwatchWorkerDown",
    "CarwatchProcessingStalled",
    "CarwatchConsumerLagGrowing",
    "CarwatchFeedSilent",
    "CarwatchDeadLetterRateHigh",
    "CarwatchTableRecoverySlow",
    "CarwatchTargetDown",
    "CarwatchListenerRejecting",
    "CarwatchListenerBrokerFailing",
    "CarwatchAlertDeliveryFailing",
    "CarwatchDeliveryLagGrowing",
    "CarwatchReadModelLagging",
    "CarwatchAckOutboxStuck",
}
#: Alerts that say "this process cannot be scraped"; Alertmanager mutes the others behind them.
DOWN_ALERTS = {"CarwatchWorkerDown", "CarwatchTargetDown"}
JOB = "carwatch-worker"
#: Every scraped process: its job and local default metrics port (docs/runbook.md: jobs and ports).
PROCESSES = (WORKER, MLLP, FHIR_GATEWAY, WEBHOOK, WEB)
RUNBOOK_TEMPLATE = "{{ $externalLabels.runbook_base }}#"
TIMEOUT = 30.0  # seconds any live check may wait


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


# ---------------------------------------------------------------- static checks


def test_all_pipeline_alerts_are_defined() -> None:
    assert {r["alert"] for r in alert_rules()} == EXPECTED_ALERTS


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning")
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{rule['alert']} lacks annotation {key}"
    assert annotations["runbook_url"] == RUNBOOK_TEMPLATE + rule["alert"].lower()
    # no patient data can reach an ops alert: only bounded labels are templated
    for text in (annotations["summary"], annotations["description"]):
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in ("job", "instance", "topic", "channel", "listener"), (
                rule["alert"],
                label,
            )


def test_the_runbook_base_is_one_absolute_url() -> None:
    """Pagers open runbook_url as it is: the base must be absolute (scheme and host)."""
    base = yaml.safe_load(PROM_CONFIG.read_text())["global"]["external_labels"]["runbook_base"]
    url = urllib.parse.urlsplit(base)
    assert url.scheme == "https" and url.netloc and url.path.endswith("runbook.md"), base
    assert not url.fragment, "the alert adds the #anchor"
    suite = yaml.safe_load(RULE_TESTS.read_text())
    for case in suite["tests"]:
        assert case["external_labels"] == {"runbook_base": base}, case["name"]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for headings, plus explicit <a id="..."> / <a name="...">."""
    anchors = set(re.findall(r'<a (?:id|name)="([^"]+)"', markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_runbook_has_a_section_per_alert() -> None:
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"docs/runbook.md has no section #{anchor} for {rule['alert']}"


def input_series() -> list[tuple[str, str]]:
    suite = yaml.safe_load(RULE_TESTS.read_text())
    return [
        (case["name"], series["series"])
        for case in suite["tests"]
        for series in case["input_series"]
    ]


@pytest.mark.parametrize(("case", "series"), input_series())
def test_promtool_cases_use_the_series_the_processes_export(case: str, series: str) -> None:
    """A case that invents a series under a job whose process does not export it proves a rule
    that can never fire (issue #14): every input series must be a real (metric, job) pair."""
    exported = promql.Exported.from_metric_sets()
    assert promql.problems(series, exported, ALLOWED_LABEL_VALUES) == [], case
    (selector,) = promql.parse(series).selectors
    labels = {m.label for m in selector.matchers} - promql.TARGET_LABELS
    job = next(m.value for m in selector.matchers if m.label == "job")
    assert labels == exported.pairs[(selector.metric, job)], f"{case}: {series} lacks labels"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    suite = yaml.safe_load(RULE_TESTS.read_text())
    assert [(RULE_TESTS.parent / f).resolve() for f in suite["rule_files"]] == [RULES.resolve()]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires >= EXPECTED_ALERTS, f"no firing case for {sorted(EXPECTED_ALERTS - fires)}"
    assert quiet >= EXPECTED_ALERTS, f"no non-firing case for {sorted(EXPECTED_ALERTS - quiet)}"
    severities_tested = {
        (check["alertname"], exp["exp_labels"]["severity"])
        for case in suite["tests"]
        for check in case.get("alert_rule_test", [])
        for exp in check.get("exp_alerts") or []
    }
    for rule in alert_rules():
        assert (rule["alert"], rule["labels"]["severity"]) in severities_tested, rule["alert"]


def file_sd_targets(job: dict[str, Any], base: Path = PROM_DIR) -> list[str]:
    targets: list[str] = []
    for sd in job["file_sd_configs"]:
        for pattern in sd["files"]:
            for path in base.glob(pattern):
                for group in yaml.safe_load(path.read_text()):
                    targets.extend(group["targets"])
    return targets


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.job)
def test_prometheus_config_scrapes_every_process_and_loads_the_rules(process: Any) -> None:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    assert [PROM_DIR / f for f in config["rule_files"]] == [RULES]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == process.job]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert file_sd_targets(job) == [f"127.0.0.1:{process.metrics_port}"], (
        f"local default: the metrics port of {process.command}"
    )


def test_inhibitions_name_real_alerts() -> None:
    """Every alert of a process is muted while that process is down, and nothing else is."""
    config = yaml.safe_load(AM_CONFIG.read_text())
    names = EXPECTED_ALERTS
    down_targets: set[str] = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=)"([^"]*)"', matcher)
            if m:
                listed = set(m.group(2).split("|"))
                assert listed <= names, f"unknown alert in {matcher}"
                sources = {s.split('"')[1] for s in rule["source_matchers"]}
                if sources <= DOWN_ALERTS and matcher in rule["target_matchers"]:
                    down_targets |= listed
        assert rule["equal"], "an inhibition without `equal` would mute other processes too"
    assert down_targets == names - DOWN_ALERTS


# ---------------------------------------------------------------- promtool / amtool


@pytest.mark.ops
def test_promtool_check_config() -> None:
    promtool = prombin.require("promtool")
    assert_ok(run([promtool, "check", "config", str(PROM_CONFIG)]))


@pytest.mark.ops
def test_promtool_check_rules() -> None:
    promtool = prombin.require("promtool")
    proc = run([promtool, "check", "rules", str(RULES)])
    assert_ok(proc)
    assert f"{len(alert_rules())} rules found" in proc.stdout + proc.stderr


@pytest.mark.ops
def test_promtool_test_rules() -> None:
    promtool = prombin.require("promtool")
    proc = run([promtool, "test", "rules", str(RULE_TESTS)])
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.ops
def test_promtool_checks_the_k8s_prometheusrule(tmp_path: Path) -> None:
    promtool = prombin.require("promtool")
    resource = yaml.safe_load((REPO / "deploy/k8s/prometheusrule.yaml").read_text())
    rules = tmp_path / "prometheusrule.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": resource["spec"]["groups"]}))
    assert_ok(run([promtool, "check", "rules", str(rules)]))


@pytest.mark.ops
def test_amtool_check_config() -> None:
    amtool = prombin.require("amtool")
    proc = run([amtool, "check-config", str(AM_CONFIG)])
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.ops
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=CarwatchWorkerDown", "severity=critical"], "carwatch-page"),
        (["alertname=CarwatchConsumerLagGrowing", "severity=warning"], "carwatch-ticket"),
        (["alertname=Unlabelled"], "carwatch-ticket"),
    ],
)
def test_amtool_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = prombin.require("amtool")
    proc = run([amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels])
    assert_ok(proc)
    assert proc.stdout.strip() == receiver


# ---------------------------------------------------------------- live servers on 127.0.0.1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, data: Any = None) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip() else None


def wait_for(what: str, check: Callable[[], Any], log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}; last: {last!r}\n{tail}", pytrace=False)


@contextlib.contextmanager
def server(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the duration of the block; stop it (and only it) afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


class WebhookSink:
    """Collects Alertmanager webhook notifications: receiver path -> alerts' label sets."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length))
                with sink.lock:
                    for alert in payload["alerts"]:
                        sink.received.append((self.path, alert["labels"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WebhookSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def alertnames(self, path: str) -> set[tuple[str, str]]:
        with self.lock:
            return {
                (labels["alertname"], labels.get("instance", ""))
                for p, labels in self.received
                if p == path
            }


def _shorten(route: dict[str, Any]) -> None:
    route["group_wait"] = "1s"
    route["group_interval"] = "1s"
    for child in route.get("routes", []):
        _shorten(child)


@pytest.mark.ops
def test_alertmanager_routes_and_inhibits(tmp_path: Path) -> None:
    """A real Alertmanager with our config: who gets paged, what is inhibited by what."""
    alertmanager_bin = prombin.require("alertmanager")
    config = yaml.safe_load(AM_CONFIG.read_text())
    _shorten(config["route"])
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"

    def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
        return {
            "labels": {"alertname": name, "severity": severity, "service": "carwatch", **labels},
            "annotations": {"summary": name},
            "startsAt": datetime.now(UTC).isoformat(),
        }

    w1, w2, w3 = "w1:9464", "w2:9464", "w3:9464"
    m1, d1, d2 = "m1:9465", "d1:9467", "d2:9467"
    labs = "carwatch.labs"
    alerts = {
        # worker w1 is down: its other alerts are inhibited
        ("CarwatchWorkerDown", w1, "critical"): "active",
        ("CarwatchProcessingStalled", w1, "critical"): "suppressed",
        # w2 is stalled: its lag growth is inhibited by the stall
        ("CarwatchProcessingStalled", w2, "critical"): "active",
        ("CarwatchConsumerLagGrowing", w2, "warning"): "suppressed",
        # job-wide: one worker down does not hide a silent feed
        ("CarwatchFeedSilent", "", "critical"): "active",
        ("CarwatchDeadLetterRateHigh", "", "warning"): "active",
        # two-tier: the critical replaces the warning
        ("CarwatchTableRecoverySlow", w3, "warning"): "suppressed",
        ("CarwatchTableRecoverySlow", w3, "critical"): "active",
        # deliverer d1 cannot be scraped: its delivery alerts are inhibited
        ("CarwatchTargetDown", d1, "critical"): "active",
        ("CarwatchAlertDeliveryFailing", d1, "critical"): "suppressed",
        # d2 fails deliveries for good: its lag is their symptom
        ("CarwatchAlertDeliveryFailing", d2, "critical"): "active",
        ("CarwatchDeliveryLagGrowing", d2, "critical"): "suppressed",
        # the MLLP listener cannot reach Kafka: its AR answers are the broker's symptom
        ("CarwatchListenerBrokerFailing", m1, "critical"): "active",
        ("CarwatchListenerRejecting", m1, "warning"): "suppressed",
    }
    jobs = {"w": JOB, "d": WEBHOOK.job, "m": MLLP.job, "": JOB}
    extra = {
        "CarwatchProcessingStalled": {"topic": labs},
        "CarwatchConsumerLagGrowing": {"topic": labs},
        "CarwatchAlertDeliveryFailing": {"channel": "webhook"},
        "CarwatchListenerBrokerFailing": {"listener": "mllp"},
        "CarwatchListenerRejecting": {"listener": "mllp"},
    }

    def payload(keys: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        out = []
        for name, instance, severity in keys:
            labels = {"job": jobs[instance[:1]], **extra.get(name, {})}
            if instance:
                labels["instance"] = instance
            out.append(alert(name, severity, **labels))
        return out

    def states() -> dict[tuple[str, str, str], str]:
        return {
            (a["labels"]["alertname"], a["labels"].get("instance", ""), a["labels"]["severity"]): a[
                "status"
            ]["state"]
            for a in http_json(f"{base}/alerts")
        }

    with WebhookSink() as sink:
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"{sink.url}/{receiver['name']}"
        config_file = tmp_path / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        log = tmp_path / "alertmanager.log"
        cmd = [
            alertmanager_bin,
            f"--config.file={config_file}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ]
        with server(cmd, log):
            wait_for(
                "alertmanager ready",
                lambda: (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).close()
                    or True
                ),
                log,
            )
            http_json(f"{base}/alerts", payload(list(alerts)))
            wait_for("inhibitions to settle", lambda: states() == alerts, log)

            # notifications: critical -> page, warning -> ticket, inhibited ones -> nowhere
            page = {
                (n, i) for (n, i, s), st in alerts.items() if st == "active" and s == "critical"
            }
            ticket = {
                (n, i) for (n, i, s), st in alerts.items() if st == "active" and s == "warning"
            }
            wait_for("page notifications", lambda: sink.alertnames("/carwatch-page") >= page, log)
            wait_for(
                "ticket notifications", lambda: sink.alertnames("/carwatch-ticket") >= ticket, log
            )
            time.sleep(2.5)  # more than group_wait + group_interval: anything else would be here
            assert sink.alertnames("/carwatch-page") == page
            assert sink.alertnames("/carwatch-ticket") == ticket

            # no carwatch-worker target at all (absent(): no instance label) silences the
            # job-wide alerts of that job as well
            http_json(f"{base}/alerts", payload([("CarwatchWorkerDown", "", "critical")]))
            wait_for(
                "job-wide inhibition",
                lambda: (
                    states()[("CarwatchFeedSilent", "", "critical")] == "suppressed"
                    and states()[("CarwatchDeadLetterRateHigh", "", "warning")] == "suppressed"
                ),
                log,
            )
            assert states()[("CarwatchProcessingStalled", w2, "critical")] == "active"


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = http_json(url)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def healthy_endpoints() -> dict[str, str]:
    """Each job's metric set, healthy, on 127.0.0.1: job → address."""
    worker = PipelineMetrics()
    worker.results.labels("anc", "accepted").inc(3)
    worker.consumed.labels("carwatch.labs").inc(3)
    worker.consumer_lag.labels("carwatch.labs").set(0)
    worker.last_result_timestamp.set(time.time())
    worker.patients_monitored.set(2)
    worker.recovery_in_progress.set(0)
    mllp, fhir = ListenerMetrics(), ListenerMetrics()
    mllp.messages.labels("mllp", "AA").inc(3)
    fhir.messages.labels("fhir", "201").inc(2)
    webhook = DeliveryMetrics()
    webhook.deliveries.labels("webhook", "delivered").inc()
    webhook.attempts.labels("webhook", "delivered").inc()
    web = WebMetrics()
    web.lag.labels("carwatch.alerts").set(0)
    web.outbox_pending.set(0)
    web.broker_reachable.set(1)
    sets = {
        JOB: worker,
        MLLP.job: mllp,
        FHIR_GATEWAY.job: fhir,
        WEBHOOK.job: webhook,
        WEB.job: web,
    }
    return {
        job: f"127.0.0.1:{serve_metrics(metrics.registry, '127.0.0.1', 0)}"
        for job, metrics in sets.items()
    }


@pytest.mark.ops
def test_prometheus_scrapes_every_job_and_evaluates_the_rules(tmp_path: Path) -> None:
    """Our prometheus.yml against real prometheus-client endpoints of every metric set: all
    targets up, every rule evaluated without error, nothing pending for healthy processes."""
    prometheus_bin = prombin.require("prometheus")
    exporters = healthy_endpoints()
    port = free_port()
    # the shipped config, with 1 s intervals and targets pointing at this test's ports
    workdir = tmp_path / "prometheus"
    shutil.copytree(PROM_DIR, workdir, ignore=shutil.ignore_patterns("tests"))
    config = yaml.safe_load((workdir / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for job, address in exporters.items():
        (workdir / f"targets/{job}.yml").write_text(yaml.safe_dump([{"targets": [address]}]))
    (workdir / "targets/alertmanager.yml").write_text(
        yaml.safe_dump([{"targets": [f"127.0.0.1:{free_port()}"]}])
    )

    log = tmp_path / "prometheus.log"
    base = f"http://127.0.0.1:{port}"
    cmd = [
        prometheus_bin,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with server(cmd, log):
        up = wait_for(
            "every process's target to be up",
            lambda: (lambda r: r if len(r) == len(exporters) else [])(
                _query(base, 'up{job=~"carwatch-.*"} == 1')
            ),
            log,
        )
        assert {u["metric"]["job"]: u["metric"]["instance"] for u in up} == exporters
        (sample,) = wait_for(
            "a listener sample",
            lambda: _query(base, 'carwatch_listener_messages_total{job="carwatch-mllp"}'),
            log,
        )
        assert float(sample["value"][1]) == 3.0

        def evaluated_rules() -> list[dict[str, Any]]:
            groups = http_json(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
            done = all(
                r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
            )
            return rules if rules and done else []

        rules = wait_for("every rule evaluated without error", evaluated_rules, log)
        assert {r["name"] for r in rules} == EXPECTED_ALERTS
        assert len(rules) == len(alert_rules())

        # healthy processes raise nothing (absent(up) may be pending before the 1st scrape)
        wait_for(
            "no pending or firing alert for healthy processes",
            lambda: http_json(f"{base}/api/v1/alerts")["data"]["alerts"] == [],
            log,
        )
