"""Webhook delivery: signature, retry classification, backoff, and a real loopback receiver."""

import asyncio

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from streams.delivery.webhook import (
    RetryPolicy,
    WebhookDeliverer,
    aiohttp_sender,
    headers,
    retryable,
    signature,
    verify,
)
from streams.metrics import ATTEMPT_RESULTS, DeliveryMetrics

SECRET = b"shared-secret"
BODY = b'{"alert_id": "a1", "action": "raised"}'


def test_signature_verifies_and_detects_tampering_and_stale_requests() -> None:
    h = headers(SECRET, "a1:0", BODY, now=1_800_000_000)
    ts, sig = int(h["X-Carwatch-Timestamp"]), h["X-Carwatch-Signature"]
    assert sig == signature(SECRET, ts, BODY) and sig.startswith("sha256=")
    assert verify(SECRET, ts, BODY, sig, now=1_800_000_010)
    assert not verify(SECRET, ts, BODY + b" ", sig, now=1_800_000_010)
    assert not verify(b"other", ts, BODY, sig, now=1_800_000_010)
    assert not verify(SECRET, ts, BODY, sig, now=1_800_000_000 + 301)


@pytest.mark.parametrize(
    ("status", "retry"),
    [(None, True), (500, True), (503, True), (429, True), (408, True), (400, False), (404, False)],
)
def test_which_failures_are_retried(status: int | None, retry: bool) -> None:
    assert retryable(status) is retry


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(attempts=8, first_delay_s=0.5, max_delay_s=4)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1, 2, 4, 4]


def _deliverer(statuses: list[int | None]) -> tuple[WebhookDeliverer, list[float], DeliveryMetrics]:
    metrics = DeliveryMetrics(CollectorRegistry())
    slept: list[float] = []
    replies = iter(statuses)

    async def send(url: str, body: bytes, request_headers: dict[str, str]) -> int | None:
        return next(replies)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    deliverer = WebhookDeliverer(
        urls=["http://127.0.0.1:1/hook"],
        secret=SECRET,
        send=send,
        metrics=metrics,
        retry=RetryPolicy(attempts=4, first_delay_s=1, max_delay_s=10),
        sleep=sleep,
    )
    return deliverer, slept, metrics


def _count(metrics: DeliveryMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "carwatch_alert_deliveries_total", {"channel": "webhook", "outcome": outcome}
    )
    return value or 0.0


def _attempts(metrics: DeliveryMetrics) -> dict[str, float]:
    """``carwatch_delivery_attempts_total`` by result (results never seen are left out)."""
    found = {}
    for result in ATTEMPT_RESULTS:
        value = metrics.registry.get_sample_value(
            "carwatch_delivery_attempts_total", {"channel": "webhook", "result": result}
        )
        if value:
            found[result] = value
    return found


async def test_transient_failures_are_retried_until_delivered() -> None:
    deliverer, slept, metrics = _deliverer([None, 503, 200])
    assert await deliverer.deliver("a1:0", BODY)
    assert slept == [1, 2]
    assert (_count(metrics, "retried"), _count(metrics, "delivered")) == (2, 1)
    assert _attempts(metrics) == {"no_response": 1, "retryable": 1, "delivered": 1}


async def test_a_rejecting_receiver_fails_at_once_and_is_counted() -> None:
    deliverer, slept, metrics = _deliverer([400])
    assert not await deliverer.deliver("a1:0", BODY)
    assert slept == [] and _count(metrics, "failed") == 1
    assert _attempts(metrics) == {"rejected": 1}


async def test_retries_are_bounded() -> None:
    deliverer, slept, metrics = _deliverer([500, 500, 500, 500])
    assert not await deliverer.deliver("a1:0", BODY)
    assert slept == [1, 2, 4] and _count(metrics, "failed") == 1
    assert _attempts(metrics) == {"retryable": 4}


async def test_delivery_to_a_real_receiver_on_loopback() -> None:
    received: list[tuple[bytes, dict[str, str]]] = []
    failures = iter([True, False])

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((body, dict(request.headers)))
        return web.Response(status=503 if next(failures) else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    send, close = aiohttp_sender(timeout_s=5)
    try:
        deliverer = WebhookDeliverer(
            urls=[f"http://127.0.0.1:{port}/hook"],
            secret=SECRET,
            send=send,
            metrics=DeliveryMetrics(CollectorRegistry()),
            retry=RetryPolicy(attempts=3, first_delay_s=0.01),
        )
        assert await asyncio.wait_for(deliverer.deliver("a1:0", BODY), timeout=30)
    finally:
        await close()
        await runner.cleanup()
    assert len(received) == 2 and received[-1][0] == BODY
    sent = received[-1][1]
    assert sent["X-Carwatch-Event-Id"] == "a1:0"
    assert verify(
        SECRET,
        int(sent["X-Carwatch-Timestamp"]),
        BODY,
        sent["X-Carwatch-Signature"],
        now=int(sent["X-Carwatch-Timestamp"]),
    )
