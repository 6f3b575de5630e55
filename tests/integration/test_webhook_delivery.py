"""Webhook delivery from the real alerts topic to a real receiver on loopback."""

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kafka import KafkaProducer

from streams.delivery.webhook import WebhookDeliverer, run_webhooks, verify
from streams.metrics import DeliveryMetrics
from streams.pipeline.topics import ensure_topics
from streams.settings import Settings
from tests.integration.conftest import REPO, Broker

pytestmark = pytest.mark.integration
SECRET = "test-secret"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    received: list[tuple[bytes, dict[str, str]]] = []
    first_attempt = {"fail": True}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, dict(self.headers)))
            failing = first_attempt["fail"]
            first_attempt["fail"] = False
            self.send_response(503 if failing else 204)  # one transient failure: retried
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_alert_events_are_delivered_signed_and_retried(
    broker: Broker, receiver: tuple[str, list[tuple[bytes, dict[str, str]]]], tmp_path: object
) -> None:
    url, received = receiver
    topic = f"webhook-test-{os.getpid()}.alerts"
    events = [
        json.dumps({"event_id": f"a{i}:0", "alert_id": f"a{i}", "action": "raised"}).encode()
        for i in range(3)
    ]
    ensure_topics(Settings(broker_url=broker.url), [topic], partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for event in events:
        producer.send(topic, key=b"P1", value=event)
    producer.flush(timeout=30)
    producer.close()

    env = {
        **os.environ,
        "CARWATCH_BROKER_URL": broker.url,
        "CARWATCH_ALERTS_TOPIC": topic,
        "CARWATCH_WEBHOOK_SECRET": SECRET,
    }
    command = [
        sys.executable,
        "-m",
        "streams.cli",
        "alerts",
        "webhook",
        "--url",
        url,
        "--group",
        f"g-{os.getpid()}",
        "--max-events",
        "3",
        "--idle-timeout",
        "30",
        "--metrics-port",
        "0",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 events handled" in done.stderr

    bodies = [body for body, _ in received]
    assert len(received) == 4  # the first POST got 503 and was retried
    assert bodies[0] == bodies[1] == events[0] and bodies[2:] == events[1:]
    for body, headers in received:
        ts = int(headers["X-Carwatch-Timestamp"])
        assert verify(SECRET.encode(), ts, body, headers["X-Carwatch-Signature"], now=ts)
        assert headers["X-Carwatch-Event-Id"] == json.loads(body)["event_id"]


def test_missing_secret_is_a_one_line_usage_error(broker: Broker) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CARWATCH_WEBHOOK_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "alerts", "webhook", "--url", "http://127.0.0.1:9/x"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "CARWATCH_WEBHOOK_SECRET" in done.stderr


async def test_lag_counts_the_events_a_stuck_receiver_holds_back(broker: Broker) -> None:
    """carwatch_delivery_lag_messages: every event behind the one being delivered, and 0 once
    all are handled (CarwatchDeliveryLagGrowing reads it)."""
    topic = f"webhook-lag-{os.getpid()}.alerts"
    ensure_topics(Settings(broker_url=broker.url), [topic], partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(4):
        producer.send(topic, key=b"P1", value=json.dumps({"event_id": f"e{i}:0"}).encode())
    producer.flush(timeout=30)
    producer.close()

    receiver_up = asyncio.Event()
    attempts: list[bytes] = []

    async def send(url: str, body: bytes, request_headers: dict[str, str]) -> int | None:
        attempts.append(body)
        await receiver_up.wait()
        return 204

    metrics = DeliveryMetrics()
    deliverer = WebhookDeliverer(
        urls=["http://127.0.0.1:9/hook"], secret=b"s", send=send, metrics=metrics
    )
    config = Settings(broker_url=broker.url).aiokafka_config()
    run = asyncio.create_task(
        run_webhooks(config, topic, f"g-lag-{os.getpid()}", deliverer, 4, idle_timeout_s=30)
    )
    try:
        for _ in range(300):
            if attempts or run.done():
                break
            await asyncio.sleep(0.1)
        assert attempts, "the deliverer never reached the receiver"
        assert metrics.registry.get_sample_value("carwatch_delivery_lag_messages") == 4
        receiver_up.set()
        assert await asyncio.wait_for(run, 60) == 4
    finally:
        run.cancel()
    assert metrics.registry.get_sample_value("carwatch_delivery_lag_messages") == 0
