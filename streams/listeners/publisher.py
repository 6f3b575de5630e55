"""Publishing ingested records to Kafka with broker acknowledgement (the network listeners' sink).

``LabPublisher`` wraps one aiokafka ``AIOKafkaProducer`` shared by every connection of a listener
(``carwatch mllp``, ``carwatch fhir-gateway``):

- ``acks="all"`` and ``enable_idempotence=True``: a record counts as written only once the
  broker has it in every in-sync replica, and the producer's own retries never duplicate it.
- Every call awaits the acknowledgement of **every** record it was given before it returns; a
  caller acknowledges its sender (HL7 ``AA``, HTTP 2xx) only after that. When the broker cannot
  confirm within ``timeout_s`` (down, unreachable, topic missing, slow) the call raises
  ``BrokerUnavailable`` and the caller must answer "retry" (HL7 ``AR``, HTTP 503). A record
  whose acknowledgement was not seen may still have been written: the sender's resend then makes
  a duplicate, which the pipeline ignores (docs/clinical-spec.md §0 "Duplicates"). Nothing is lost either way.
- Keys: lab results and dead letters are keyed by the patient id (UTF-8), so one patient's
  records land on one partition in the order they were sent. A dead letter without a known
  patient (a message that could not be read far enough) has no key.
- The producer is created lazily and again after a failure: the listener starts while the broker
  is still down, and a producer that timed out (batches expired, sequence numbers in doubt) is
  discarded rather than reused. ``request_timeout_ms`` is the same bound as ``timeout_s``.
- Broker address (with TLS/SASL) and topic names come from ``streams.settings.Settings``
  (``CARWATCH_BROKER_URL``, ``CARWATCH_LABS_TOPIC``, ``CARWATCH_DEADLETTER_TOPIC``,
  ``CARWATCH_INBOUND_TOPIC``, …) unless given explicitly. ``make_producer`` is the one factory
  of the listeners' Kafka producers.
- The message store: ``store_inbound`` writes one raw message to ``carwatch.inbound`` (keyed by
  the feed, so one feed's messages stay in arrival order) and returns its
  ``topic:partition:offset`` once the broker has it — before the sender is answered.
- Records arrive encoded (``streams.listeners.plans``, built in the parse pool); sending
  yields to the event loop every ``SEND_SLICE`` records, so a message of 10,000 results does not
  hold other connections' answers.

No patient identifier is ever logged here: log lines name topics, counts and the broker address.
"""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Protocol, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from schemas.base import utc_isoformat
from schemas.vocab import Analyte, Outcome
from streams.ingest.config import Config, load_feed_config
from streams.listeners.plans import Plan
from streams.logs import configure_logging
from streams.metrics import (
    MLLP,
    UNKNOWN_ANALYTE,
    ListenerMetrics,
    MetricsServerError,
    Process,
    serve_metrics,
)
from streams.settings import INBOUND_MAX_MESSAGE_BYTES, Settings, bootstrap_servers

log = logging.getLogger(__name__)

#: Seconds a publish call waits for the broker's acknowledgement of all its records.
DEFAULT_TIMEOUT_S: Final = 10.0
#: Records sent between two yields to the event loop.
SEND_SLICE: Final = 64
#: Producer batch size per partition (aiokafka's default is 16 KB).
MAX_BATCH_BYTES: Final = 1024 * 1024


class BrokerUnavailable(Exception):
    """The broker did not acknowledge every record within the timeout: nothing may be confirmed
    to the sender, who must retry."""


def describe(exc: BaseException) -> str:
    """``Type: message`` without repeating the type (aiokafka's ``str`` often starts with it)."""
    name = type(exc).__name__
    text = str(exc).strip()
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class Publisher(Protocol):
    """What a listener needs from a publisher (a fake in unit tests)."""

    async def store_inbound(
        self, raw: bytes, feed: str, content_type: str, received_at: datetime, message_id: str
    ) -> str: ...

    async def publish(self, plan: Plan) -> None: ...


@dataclass(frozen=True, slots=True)
class _Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


ProducerFactory = Callable[..., Any]


def make_producer(
    connection: dict[str, Any],
    *,
    client_id: str,
    timeout_s: float,
    factory: ProducerFactory = AIOKafkaProducer,
) -> Any:
    """The listeners' producer: every record acknowledged by all in-sync replicas, idempotent
    retries, no lingering, requests large enough for the message store's biggest message,
    batches large enough that one big message does not hold a partition for long."""
    return factory(
        **connection,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=int(timeout_s * 1000),
        linger_ms=0,
        max_request_size=INBOUND_MAX_MESSAGE_BYTES,
        # One message's results go out in a few large batches, not hundreds of 16 KB ones that
        # a small message keyed to the same partition would queue behind.
        max_batch_size=MAX_BATCH_BYTES,
    )


#: Headers of a message-store record (its value is the raw message, byte for byte).
MESSAGE_ID_HEADER: Final = "carwatch-message-id"
FEED_HEADER: Final = "carwatch-feed"
CONTENT_TYPE_HEADER: Final = "content-type"
RECEIVED_AT_HEADER: Final = "carwatch-received-at"


def inbound_headers(
    message_id: str, feed: str, content_type: str, received_at: datetime
) -> list[tuple[str, bytes]]:
    return [
        (MESSAGE_ID_HEADER, message_id.encode()),
        (FEED_HEADER, feed.encode()),
        (CONTENT_TYPE_HEADER, content_type.encode()),
        (RECEIVED_AT_HEADER, utc_isoformat(received_at).encode()),
    ]


async def _enqueue(producer: Any, records: list[_Record]) -> list["asyncio.Future[Any]"]:
    """Hand ``records`` to the producer in order, one future per batch (not per record).

    A message of 10,000 results is a few 1 MB batches: the acknowledgement resolves a few
    futures instead of 10,000 (which took the event loop 50–90 ms in one go). Partitions are
    chosen by aiokafka's default partitioner (murmur2 of the key, as every Kafka client does),
    so one patient's records stay on one partition, in order. The loop gets a turn after every
    ``SEND_SLICE`` records, but only where the key changes: one patient's records of one message
    are appended without a break, so no other message's records come between them — the worker
    applies a specimen's results together only when they are consecutive (docs/clinical-spec.md §0).
    """
    if len(records) == 1:
        (record,) = records
        headers = list(record.headers) or None
        return [await producer.send(record.topic, record.value, key=record.key, headers=headers)]
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}
    open_batches: dict[tuple[str, int], Any] = {}
    futures: list[asyncio.Future[Any]] = []
    since_yield = 0
    previous: bytes | None = None
    for record in records:
        if since_yield >= SEND_SLICE and record.key != previous:
            since_yield = 0
            await asyncio.sleep(0)  # let other connections' answers through
        since_yield += 1
        previous = record.key
        if record.topic not in partitions:
            partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
        every = partitions[record.topic]
        where = (record.topic, partitioner(record.key, every, every))
        batch = open_batches.get(where)
        if (
            batch is None
            or batch.append(key=record.key, value=record.value, timestamp=None) is None
        ):
            if batch is not None:
                futures.append(await producer.send_batch(batch, where[0], partition=where[1]))
            batch = open_batches[where] = producer.create_batch()
            batch.append(key=record.key, value=record.value, timestamp=None)
    for (topic, partition), batch in open_batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


class LabPublisher:
    """Async Kafka publisher of lab results and dead letters; see the module docstring.

    Use as ``async with LabPublisher(...) as publisher:`` or call ``start``/``stop``. ``start``
    only tries to connect (a failure is logged, not raised) so a listener can come up before the
    broker; every publish call connects if needed.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        labs_topic: str | None = None,
        deadletter_topic: str | None = None,
        inbound_topic: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        settings: Settings | None = None,
        client_id: str = "carwatch-ingest",
        producer_factory: ProducerFactory = AIOKafkaProducer,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        settings = settings or Settings()
        # Broker address, topics and TLS/SASL from CARWATCH_* unless given here.
        self._connection = settings.aiokafka_config()
        self.bootstrap = bootstrap_servers(broker_url) if broker_url else settings.bootstrap_servers
        self._connection["bootstrap_servers"] = self.bootstrap
        self.labs_topic = labs_topic or settings.labs_topic
        self.deadletter_topic = deadletter_topic or settings.deadletter_topic
        self.inbound_topic = inbound_topic or settings.inbound_topic
        self.timeout_s = timeout_s
        self._client_id = client_id
        self._factory = producer_factory
        self._producer: Any = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect now if the broker answers; otherwise log and connect on first publish."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._ensure_producer()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning(
                "Kafka at %s not reachable yet (%s); will retry on the first message",
                self.bootstrap,
                type(exc).__name__,
            )

    async def stop(self) -> None:
        """Flush and close the producer (bounded by ``timeout_s``)."""
        self._closed = True
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await self._close(producer)
        if self._closing:
            await asyncio.wait(self._closing, timeout=self.timeout_s + 2)

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def store_inbound(
        self, raw: bytes, feed: str, content_type: str, received_at: datetime, message_id: str
    ) -> str:
        """Write one raw inbound message to the message store; its ``topic:partition:offset``.

        Raises ``BrokerUnavailable`` when the broker does not acknowledge it in time.
        """
        headers = inbound_headers(message_id, feed, content_type, received_at)
        record = _Record(self.inbound_topic, feed.encode(), raw, tuple(headers))
        (metadata,) = await self._send_all([record])
        return f"{metadata.topic}:{metadata.partition}:{metadata.offset}"

    async def publish(self, plan: Plan) -> None:
        """Write a plan's results and dead letters together; return once the broker acked
        every one. Raises ``BrokerUnavailable`` when it does not within ``timeout_s``."""
        records = [_Record(self.labs_topic, key, value) for key, value in plan.results]
        records += [_Record(self.deadletter_topic, key, value) for key, value in plan.dead_letters]
        if records:
            await self._send_all(records)

    async def publish_records(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> None:
        """Write already-encoded records to ``topic`` (``carwatch deadletter retry``)."""
        if records:
            await self._send_all([_Record(topic, key, value) for key, value in records])

    async def _send_all(self, records: list[_Record]) -> list[Any]:
        if self._closed:
            raise BrokerUnavailable("the publisher is shut down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        producer: Any = None
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._ensure_producer()
                futures = await _enqueue(producer, records)
            # asyncio.wait, not gather: a timeout must not cancel aiokafka's own futures.
            done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
            failures = [f.exception() for f in done if f.exception() is not None]
            if pending or failures:
                first = failures[0] if failures else None
                why = describe(first) if first else f"{len(pending)} not acknowledged in time"
                raise BrokerUnavailable(
                    f"Kafka at {self.bootstrap} did not acknowledge {len(pending) + len(failures)}"
                    f" of {len(futures)} batch(es) of {len(records)} record(s) within "
                    f"{self.timeout_s:g} s ({why})"
                )
            return [future.result() for future in futures]
        except BrokerUnavailable:
            await self._discard(producer)
            raise
        except (TimeoutError, KafkaError, OSError) as exc:
            await self._discard(producer)
            raise BrokerUnavailable(
                f"Kafka at {self.bootstrap} is unavailable ({describe(exc)}); "
                f"{len(records)} record(s) not written"
            ) from exc

    async def _ensure_producer(self) -> Any:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if self._closed:
                raise BrokerUnavailable("the publisher is shut down")
            producer = make_producer(
                self._connection,
                client_id=self._client_id,
                timeout_s=self.timeout_s,
                factory=self._factory,
            )
            try:
                await producer.start()
            except BaseException:
                self._close_later(producer)
                raise
            log.info("connected to Kafka at %s", self.bootstrap)
            self._producer = producer
            return producer

    async def _discard(self, producer: Any) -> None:
        """Drop a producer after a failure; the next publish makes a fresh one."""
        if producer is None:
            return
        async with self._lock:
            if self._producer is producer:
                self._producer = None
            else:
                return  # another caller already discarded it
        log.warning("Kafka at %s did not confirm in time; reconnecting", self.bootstrap)
        self._close_later(producer)

    def _close_later(self, producer: Any) -> None:
        """Close in the background: the caller's answer ("retry") must not wait for it."""
        task = asyncio.create_task(self._close(producer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, producer: Any) -> None:
        stop: Callable[[], Awaitable[None]] = producer.stop
        try:
            async with asyncio.timeout(self.timeout_s):
                await stop()
            return
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("closing the Kafka producer failed (%s)", type(exc).__name__)
        # The graceful stop waits for undeliverable batches: cut the sender and the connections.
        sender = getattr(producer, "_sender", None)
        client = getattr(producer, "client", None)
        try:
            if sender is not None:
                await asyncio.wait_for(sender.close(), timeout=1.0)
            if client is not None:
                await asyncio.wait_for(client.close(), timeout=1.0)
        except (TimeoutError, KafkaError, OSError):
            pass


# --- counting one answered input -----------------------------------------------------------------


def count_plan(metrics: ListenerMetrics | None, plan: Plan, adapter: str) -> None:
    """Count a published input: results by analyte and outcome, rejections by reason, dead
    letters by adapter (``mllp``/``fhir``), code/unit mismatches. Call only once the records
    are acknowledged, so a resend after a broker outage is not counted twice."""
    if metrics is None:
        return
    for analyte, count in plan.accepted.items():
        metrics.results.labels(analyte, Outcome.ACCEPTED.value).inc(count)
    if plan.accepted:
        metrics.last_result_timestamp.set_to_current_time()
    if plan.unmapped:
        metrics.results.labels(UNKNOWN_ANALYTE, Outcome.UNMAPPED.value).inc(plan.unmapped)
    for reason, count in plan.reasons.items():
        metrics.results.labels(UNKNOWN_ANALYTE, Outcome.REJECTED.value).inc(count)
        metrics.rejected.labels(reason).inc(count)
        metrics.deadletters.labels(adapter).inc(count)
    for analyte, count in plan.mismatched.items():
        metrics.code_unit_mismatch.labels(analyte).inc(count)


# --- plumbing shared by the listener commands -----------------------------------------------------


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM (the listeners' foreground loop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    try:
        await stop.wait()
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


class ListenerSetupError(Exception):
    """A listener command cannot start: bad feed config, broker URL, or an address in use."""


#: Topics a listener writes, as ``topic`` label values (the roles, not the configured names).
LISTENER_TOPICS: Final = ("carwatch.inbound", "carwatch.labs")


def export_listener_series(metrics: ListenerMetrics, listener: str) -> None:
    """Export the labelled series a dashboard or alert rule selects from the start, at 0: a
    counter that was never incremented is not scraped at all, and "no failures yet" must read
    as 0, not as a missing series."""
    for topic in LISTENER_TOPICS:
        metrics.publish_failures.labels(listener, topic)
    for analyte in (Analyte.CD19_PCT, Analyte.CD19_ABS):
        metrics.code_unit_mismatch.labels(analyte.value)


def listener_metrics(
    process: Process, port: int | None, ready: Callable[[str], None] | None = None
) -> ListenerMetrics:
    """A listener's metrics in their own registry, served where ``Settings.metrics_address``
    says (``port`` from the command line, else ``CARWATCH_METRICS_*``, else its own port)."""
    metrics = ListenerMetrics()
    export_listener_series(metrics, "mllp" if process is MLLP else "fhir")
    try:
        host, port = Settings().metrics_address(process.metrics_port, port)
        bound = serve_metrics(metrics.registry, host, port)
    except (ValueError, MetricsServerError) as exc:
        raise ListenerSetupError(str(exc)) from exc
    if ready is not None:
        ready(f"metrics on http://{host}:{bound}/metrics")
    return metrics


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """The Kafka options of a listener command (``None``: from ``CARWATCH_*``)."""

    broker_url: str | None
    labs_topic: str | None
    deadletter_topic: str | None
    inbound_topic: str | None
    publish_timeout: float


def make_publisher(kafka: KafkaOptions) -> LabPublisher:
    try:
        return LabPublisher(
            kafka.broker_url,
            labs_topic=kafka.labs_topic,
            deadletter_topic=kafka.deadletter_topic,
            inbound_topic=kafka.inbound_topic,
            timeout_s=kafka.publish_timeout,
        )
    except ValueError as exc:
        raise ListenerSetupError(str(exc)) from exc


def prepare_listener(
    process: Process,
    kafka: KafkaOptions,
    metrics_port: int | None,
    log_level: str,
    ready: Callable[[str], None] | None = None,
) -> tuple[LabPublisher, ListenerMetrics]:
    """What every listener command sets up: its Kafka publisher, PHI-safe logging, metrics."""
    publisher = make_publisher(kafka)
    configure_logging(log_level)
    return publisher, listener_metrics(process, metrics_port, ready)


def serve(listener: Coroutine[Any, Any, None], host: str, port: int) -> None:
    """Run a listener until it stops; an address that cannot be bound is a setup error."""
    try:
        asyncio.run(listener)
    except OSError as exc:
        raise ListenerSetupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def feed_config(path: str | None, model: type[Config]) -> Config:
    try:
        return load_feed_config(path, model)
    except ValueError as exc:
        raise ListenerSetupError(str(exc)) from exc
