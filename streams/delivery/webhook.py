"""Webhook delivery of alert events: signed, retried, at least once (DESIGN.md data flow).

Each alert event is POSTed as its wire JSON to every configured URL with

- ``X-Carwatch-Event-Id``: the event's ``event_id`` -- receivers drop re-deliveries by it;
- ``X-Carwatch-Timestamp``: Unix seconds of this attempt;
- ``X-Carwatch-Signature``: ``sha256=`` + HMAC-SHA256 over ``"{timestamp}.{body}"`` with the
  shared secret, so a receiver can check origin and integrity and reject replays of old requests.

Delivery is retried with capped exponential backoff on timeouts, connection errors, 408, 429 and
5xx; any other 4xx is a permanent failure (the receiver rejected the request: retrying cannot help),
counted and logged without patient data. The Kafka offset of an event is committed only after
every URL succeeded or failed permanently, so a crash re-delivers rather than loses.

Metrics (``DeliveryMetrics``, job ``carwatch-webhook``): every HTTP attempt by result, every
event's final outcome per receiver, and the lag -- events on the alerts topic not handled yet,
which grows while a receiver is down and the retries hold the queue (CarwatchDeliveryLagGrowing).
"""

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.metrics import DeliveryMetrics

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "{timestamp}.{body}")."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: bytes, timestamp: int, body: bytes, header: str, now: float, tolerance_s: int = 300
) -> bool:
    """What a receiver does: constant-time signature check and a freshness window."""
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


def headers(secret: bytes, event_id: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = int(now)
    return {
        "Content-Type": "application/json",
        "X-Carwatch-Event-Id": event_id,
        "X-Carwatch-Timestamp": str(timestamp),
        "X-Carwatch-Signature": signature(secret, timestamp, body),
    }


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))


def retryable(status: int | None) -> bool:
    """None = no response (timeout, connection error): retry."""
    return status is None or status in RETRYABLE_STATUS


def attempt_result(status: int | None) -> str:
    """The ``result`` label of one attempt (``streams.metrics.ATTEMPT_RESULTS``)."""
    if status is None:
        return "no_response"
    if 200 <= status < 300:
        return "delivered"
    return "retryable" if retryable(status) else "rejected"


#: Sends one request; returns the HTTP status, or None when no response came.
Send = Callable[[str, bytes, dict[str, str]], Awaitable[int | None]]


@dataclass
class WebhookDeliverer:
    urls: Sequence[str]
    secret: bytes
    send: Send
    metrics: DeliveryMetrics
    retry: RetryPolicy = RetryPolicy()
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def deliver(self, event_id: str, body: bytes) -> bool:
        """Deliver to every URL; True when all succeeded, False when any failed for good."""
        results = [await self._deliver_one(url, event_id, body) for url in self.urls]
        return all(results)

    async def _deliver_one(self, url: str, event_id: str, body: bytes) -> bool:
        for attempt in range(1, self.retry.attempts + 1):
            status = await self.send(url, body, headers(self.secret, event_id, body, self.clock()))
            self.metrics.attempts.labels("webhook", attempt_result(status)).inc()
            if status is not None and 200 <= status < 300:
                self.metrics.deliveries.labels("webhook", "delivered").inc()
                return True
            if not retryable(status) or attempt == self.retry.attempts:
                break
            self.metrics.deliveries.labels("webhook", "retried").inc()
            await self.sleep(self.retry.delay(attempt))
        self.metrics.deliveries.labels("webhook", "failed").inc()
        log.warning("webhook delivery failed for good (last status %s)", status)
        return False


def aiohttp_sender(timeout_s: float = 10.0) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """A ``Send`` over one aiohttp session, and the coroutine that closes it."""
    import aiohttp

    session: aiohttp.ClientSession | None = None

    async def send(url: str, body: bytes, request_headers: dict[str, str]) -> int | None:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
        try:
            async with session.post(url, data=body, headers=request_headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def close() -> None:
        if session is not None:
            await session.close()

    return send, close


async def run_webhooks(
    consumer_config: dict[str, object],
    topic: str,
    group_id: str,
    deliverer: WebhookDeliverer,
    max_events: int | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """Consume ``topic`` and deliver every event; commit each offset only after delivery.

    Events that failed for good are counted (``carwatch_alert_deliveries_total{outcome="failed"}``,
    the ops alert CarwatchAlertDeliveryFailing) and skipped, so one rejecting receiver cannot stop
    the others. ``max_events`` / ``idle_timeout_s`` bound a run (tests, one-shot backfills).
    Returns the number of events handled.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **consumer_config,
    )
    await consumer.start()
    lag = DeliveryLag(consumer, deliverer.metrics)
    handled = 0
    try:
        while max_events is None or handled < max_events:
            batch = await consumer.getmany(timeout_ms=1000)
            await lag.refresh(batch)
            if not batch:
                if idle_timeout_s is not None:
                    idle_timeout_s -= 1.0
                    if idle_timeout_s <= 0:
                        break
                continue
            for tp, records in batch.items():
                for record in records:
                    body = record.value or b""
                    event_id = _event_id(body)
                    if event_id is not None:
                        await deliverer.deliver(event_id, body)
                    handled += 1
                    lag.handled(tp, record.offset)
            await consumer.commit()
    finally:
        await consumer.stop()
    return handled


@dataclass
class DeliveryLag:
    """``carwatch_delivery_lag_messages``: the partitions' high-water marks minus the next offset
    this deliverer will handle, summed over its assigned partitions. Updated after every event,
    so it rises while a batch waits behind a receiver that is down."""

    consumer: Any
    metrics: DeliveryMetrics
    next_offset: dict[Any, int] = field(default_factory=dict)

    async def refresh(self, batch: dict[Any, list[Any]]) -> None:
        """After a fetch: unfetched partitions from their position, fetched ones from the
        batch's first record (the position is already past the batch)."""
        from aiokafka.errors import IllegalStateError

        self.next_offset = {}
        for tp in self.consumer.assignment():
            try:
                self.next_offset[tp] = await self.consumer.position(tp)
            except IllegalStateError:  # revoked by a rebalance meanwhile
                continue
        for tp, records in batch.items():
            if records:
                self.next_offset[tp] = records[0].offset
        self._publish()

    def handled(self, tp: Any, offset: int) -> None:
        self.next_offset[tp] = offset + 1
        self._publish()

    def _publish(self) -> None:
        behind = 0
        for tp, offset in self.next_offset.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                behind += max(0, highwater - offset)
        self.metrics.lag.set(behind)


def _event_id(body: bytes) -> str | None:
    import json

    try:
        value = json.loads(body).get("event_id")
    except (ValueError, AttributeError):
        log.warning("alerts topic: a record that is not an alert event was skipped")
        return None
    return value if isinstance(value, str) else None
