"""The clinician's view end to end: real broker, real worker, ``carwatch web``, real Chromium.

- The demo cohort's alerts appear in the inbox (exactly the open ones, critical first).
- The patient timeline shows the values the alert cites (its evidence rows, by accession).
- An acknowledgement made on the page round-trips to ``carwatch.acks`` and survives a restart of
  ``carwatch web``; a request without a session sees nothing.
- With ``carwatch web`` stopped for a while, a restart catches up and equals a rebuild from
  scratch (acknowledgements made meanwhile with ``carwatch alerts ack`` included).
- With the broker down, pages serve from the database and say how old their data is; an
  acknowledgement made meanwhile reaches ``carwatch.acks`` when the broker is back.

The timeline screenshot is kept in the run's tmp folder (``web-artefacts<N>/timeline.png``);
its path is printed.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from schemas.ack import AckEvent
from schemas.alert import AlertEvent
from schemas.vocab import AlertAction, RuleName
from streams import synthetic
from streams.pipeline.topics import ensure_topics
from streams.settings import Settings
from streams.testing import Timeline, run
from streams.web.format import result_text
from streams.web.metrics import ALLOWED_WEB_LABEL_VALUES
from streams.web.readmodel import SEVERITY_RANK
from tests.integration.conftest import (
    PARTITIONS,
    REPO,
    Broker,
    Pipeline,
    Worker,
    free_port,
    running_broker,
    wait_for,
)
from tests.integration.web.conftest import (
    USER,
    WebServer,
    acks_topic,
    login,
    request,
    snapshot,
    web_env,
)

pytestmark = pytest.mark.integration
CLI = (sys.executable, "-m", "streams.cli")


@dataclass
class Demo:
    pipeline: Pipeline
    worker: Worker
    sent: int

    def alerts(self) -> list[AlertEvent]:
        return [
            AlertEvent.model_validate_json(r.value)
            for r in self.pipeline.read(self.pipeline.alerts, timeout=3)
        ]

    def open_alerts(self) -> dict[str, AlertEvent]:
        last: dict[str, AlertEvent] = {}
        for event in sorted(self.alerts(), key=lambda a: a.decided_at):
            last[event.alert_id] = event
        return {
            alert_id: event
            for alert_id, event in last.items()
            if event.action in (AlertAction.RAISED, AlertAction.UPDATED)
        }

    def feed(self, records: list[dict[str, Any]]) -> None:
        lines = [json.dumps(r).encode() for r in records]
        self.sent = self.pipeline.feed_in_order(lines, self.worker, already=self.sent)
        self.pipeline.wait_consumed(self.worker, self.sent)
        settled: list[int] = []
        wait_for(lambda: _settled(settled, len(self.alerts())), 60, "the alert events to settle")


def _settled(counts: list[int], count: int) -> bool:
    counts.append(count)
    return count > 0 and counts[-3:] == [count] * 3


@pytest.fixture(scope="module")
def demo(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One worker over the demo cohort (every story of the demo feed), shared by this module."""
    pipeline = Pipeline(broker, tmp_path_factory.mktemp("web-demo"))
    ensure_topics(
        Settings(broker_url=broker.url),
        (pipeline.labs, pipeline.clinical, pipeline.alerts, pipeline.deadletter),
        partitions=PARTITIONS,
    )
    try:
        found = Demo(pipeline, pipeline.start_worker(), 0)
        found.feed(synthetic.cohort(len(synthetic.TRAJECTORIES), prefix="WEB"))
        yield found
    finally:
        pipeline.close()


def _rows(page: Any, section: str) -> list[dict[str, str]]:
    script = "rows => rows.map(r => ({id: r.dataset.alertId, cls: r.className}))"
    found: list[dict[str, str]] = page.locator(f"#{section} tr.alert").evaluate_all(script)
    return found


def test_the_clinician_sees_acknowledges_and_the_ack_survives_a_restart(
    demo: Demo, chromium: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = WebServer.for_pipeline(demo.pipeline, tmp_path / "web")
    server.start()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        server.wait_caught_up()
        page = context.new_page()
        login(page, server)

        expected = demo.open_alerts()
        rows = _rows(page, "unacknowledged")
        assert {row["id"] for row in rows} == set(expected)
        ranks = [SEVERITY_RANK[expected[row["id"]].severity] for row in rows]
        assert ranks == sorted(ranks, reverse=True), "critical first"

        target = next(a for a in expected.values() if a.rule is RuleName.BCA_LOSS)
        page.click(f"tr[data-alert-id='{target.alert_id}'] td.patient a")
        page.wait_for_selector("#timeline-chart[data-rendered=true]")
        _assert_evidence_shown(page, target)
        assert page.locator("#timeline-chart .main-svg").count() > 0
        # an artefact of the run: pytest removes a passed test's own tmp_path, not this folder
        shot = tmp_path_factory.mktemp("web-artefacts") / "timeline.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\ntimeline screenshot: {shot}")
        timeline_path = page.url.removeprefix(server.base)

        page.click(f".patient-alerts a[href='/alerts/{target.alert_id}']")
        page.check("input[name=action][value=overridden]")
        page.select_option("select[name=reason]", "other")
        page.fill("textarea[name=note]", "discussed at the tumour board; marrow planned")
        page.click("form.ack button[type=submit]")
        page.wait_for_selector("p.done")
        assert page.inner_text("#ack-status").startswith("Overridden by demo")

        records = demo.pipeline.read(acks_topic(demo.pipeline), timeout=30, expect=1)
        acks = [AckEvent.model_validate_json(r.value) for r in records]
        assert [(a.alert_id, a.alert_event_id, a.action.value, a.by, a.via) for a in acks] == [
            (target.alert_id, target.event_id, "overridden", USER, "web")
        ]
        assert acks[0].reason is not None and acks[0].reason.value == "other"
        assert records[0].key == target.patient_id.encode()

        server.stop()
        server.start()
        server.wait_caught_up()
        page.goto(server.base + "/")  # the session outlives the process: it is in the database
        assert target.alert_id in {row["id"] for row in _rows(page, "acknowledged")}
        assert target.alert_id not in {row["id"] for row in _rows(page, "unacknowledged")}

        _assert_outsiders_see_nothing(chromium, server, target, timeline_path)
        _assert_metric_labels_bounded(server)
    finally:
        context.close()
        server.stop()


def _assert_evidence_shown(page: Any, alert: AlertEvent) -> None:
    for item in alert.evidence:
        row = page.locator(
            f"table[data-analyte='{item.analyte.value}'] "
            f"tr.result.evidence[data-accession='{item.accession}']"
        )
        assert row.count() == 1, f"evidence {item.analyte.value} {item.accession} not shown"
        shown = row.locator("td.value").inner_text().strip()
        assert shown == result_text(
            item.analyte.value,
            item.value,
            item.comparator.value if item.comparator else None,
            item.unit,
            item.detected,
            item.method.value if item.method else None,
            item.sensitivity,
        )
        assert alert.rule.value in row.inner_text()


def _assert_outsiders_see_nothing(
    chromium: Any, server: WebServer, alert: AlertEvent, timeline_path: str
) -> None:
    stranger = chromium.new_context()
    try:
        page = stranger.new_page()
        page.goto(server.base + timeline_path)
        assert "/login" in page.url
        assert alert.patient_id not in page.content()
    finally:
        stranger.close()
    paths = (
        "/",
        "/api/inbox",
        timeline_path,
        f"/alerts/{alert.alert_id}",
        f"/api/alerts/{alert.alert_id}",
        "/static/plotly.min.js",
        "/static/timeline.js",
    )
    for path in paths:
        status, headers, body = request(server, "GET", path)
        assert status in (303, 401), path
        assert status == 401 or headers["Location"].startswith("/login"), path
        assert alert.patient_id.encode() not in body and alert.alert_id.encode() not in body
    status, _, _ = request(server, "POST", f"/alerts/{alert.alert_id}/ack")
    assert status == 403
    assert request(server, "GET", "/healthz")[0] == 200


def _assert_metric_labels_bounded(server: WebServer) -> None:
    samples = server.samples()
    assert any(name == "carwatch_readmodel_lag_messages" for name, _ in samples)
    for name, labels in samples:
        for label, value in labels:
            if label == "status":
                assert value.isdigit() and len(value) == 3, (name, value)
            elif name.startswith("carwatch_"):
                assert value in ALLOWED_WEB_LABEL_VALUES[label], (name, label, value)


# -- catch-up after a stop equals a rebuild --------------------------------------------------


def _carwatch(server: WebServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=REPO, env=server.env, capture_output=True, text=True, timeout=120
    )


def test_a_restart_after_a_stop_catches_up_to_what_a_rebuild_gives(
    demo: Demo, tmp_path: Path
) -> None:
    server = WebServer.for_pipeline(demo.pipeline, tmp_path / "web")
    server.start()
    try:
        server.wait_caught_up()
    finally:
        server.stop()

    # while the web is stopped: a new patient's story, and an acknowledgement from the CLI
    now = datetime.now(UTC)
    demo.feed(synthetic.patient("igg_decline", "WEB-LATE-1", now))
    target = next(a for a in demo.open_alerts().values() if a.rule is RuleName.MRD_POSITIVE)
    note = ("--note", "NGS MRD repeat ordered", "--by", "dr-cli")
    cli = _carwatch(server, "alerts", "ack", target.alert_id, "--action", "acted_on", *note)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"acted_on {target.alert_id}")

    server.start()
    try:
        server.wait_caught_up()
    finally:
        server.stop()
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    rebuild = _carwatch(
        server, "web", "--once", "--rebuild", "--database-url", f"sqlite:///{rebuilt}/web.db"
    )
    assert rebuild.returncode == 0, rebuild.stderr
    caught_up = snapshot(f"sqlite:///{server.folder / 'web.db'}")
    from_scratch = snapshot(f"sqlite:///{rebuilt / 'web.db'}")
    assert caught_up == from_scratch
    assert "WEB-LATE-1" in {row.split("'")[1] for row in caught_up["patients"]}
    acked = {alert_id: ack for alert_id, _, ack in caught_up["inbox"]}
    assert acked[target.alert_id] is not None


# -- the broker goes away ---------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test alone (free ports): it is stopped and started again."""
    with running_broker(free_port(), free_port(), tmp_path / "kafka") as started:
        yield started


def test_pages_serve_while_the_broker_is_down_and_an_ack_made_meanwhile_is_sent_after(
    own_broker: Broker, chromium: Any, tmp_path: Path
) -> None:
    broker = own_broker
    topics = {name: f"outage.{name}" for name in ("labs", "clinical", "alerts", "acks", "dlq")}
    settings = Settings(broker_url=broker.url, partitions=PARTITIONS)
    ensure_topics(settings, list(topics.values()), partitions=PARTITIONS)
    story = Timeline("P-OUT-1").infusion().igg(-3, 700).igg(30, 350)
    alerts = run(story.events)
    assert alerts
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for event in story.events:
        topic = topics["labs"] if event.type == "lab_result" else topics["clinical"]
        producer.send(topic, event.model_dump_json().encode(), key=b"P-OUT-1")
        producer.flush(10)
    for alert in alerts:
        producer.send(topics["alerts"], alert.model_dump_json().encode(), key=b"P-OUT-1")
    producer.flush(10)
    producer.close(5)

    env = {
        **os.environ,
        "CARWATCH_BROKER_URL": broker.url,
        "CARWATCH_APP_ID": "outage",
        "CARWATCH_PARTITIONS": str(PARTITIONS),
        "CARWATCH_LABS_TOPIC": topics["labs"],
        "CARWATCH_CLINICAL_TOPIC": topics["clinical"],
        "CARWATCH_ALERTS_TOPIC": topics["alerts"],
        "CARWATCH_ACKS_TOPIC": topics["acks"],
        "CARWATCH_DEADLETTER_TOPIC": topics["dlq"],
    }
    (tmp_path / "web").mkdir()
    server = WebServer(web_env(env, tmp_path / "web"), tmp_path / "web")
    server.start()
    context = chromium.new_context()
    try:
        server.wait_caught_up()
        page = context.new_page()
        login(page, server)
        assert {row["id"] for row in _rows(page, "unacknowledged")} == {alerts[0].alert_id}

        broker.down()
        wait_for(lambda: _banner(page, server).startswith("Kafka unreachable"), 90, "the banner")
        assert {row["id"] for row in _rows(page, "unacknowledged")} == {alerts[0].alert_id}

        page.click(f"tr[data-alert-id='{alerts[0].alert_id}'] td.summary a")
        page.click("form.ack button[type=submit]")  # "acknowledged" is preselected
        page.wait_for_selector("p.done")
        assert "not yet sent" in page.inner_text("#ack-status")
        time.sleep(3)  # the outbox publisher tries (and fails) meanwhile

        broker.up()
        pipeline = Pipeline(broker, tmp_path)
        records = pipeline.read(topics["acks"], timeout=60, expect=1)
        acks = [AckEvent.model_validate_json(r.value) for r in records]
        assert [(a.alert_id, a.action.value, a.by) for a in acks] == [
            (alerts[0].alert_id, "acknowledged", USER)
        ]
        wait_for(
            lambda: "not yet sent" not in _ack_status(page), 60, "the ack to come back from Kafka"
        )
    finally:
        context.close()
        server.stop()


def _banner(page: Any, server: WebServer) -> str:
    page.goto(server.base + "/")
    text: str = page.inner_text("#freshness")
    return text


def _ack_status(page: Any) -> str:
    page.reload()
    text: str = page.inner_text("#ack-status")
    return text
