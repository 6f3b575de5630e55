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
  a duplicate, which the pipeline ignores (DESIGN.md "Duplicates"). Nothing is lost either way.
- Keys: lab results and dead letters are keyed by the patient id (UTF-8), so one patient's
  records land on one partition in the order they were sent. A dead letter without a known
  patient (a message that could not be read far enough) has no key.
- The producer is created lazily and again after a failure: the listener starts while the broker
  is still down, and a producer that timed out (batches expired, sequence numbers in doubt) is
  discarded rather than reused. ``request_timeout_ms`` is the same bound as ``timeout_s``.
- Broker address (with TLS/SASL) and topic names come from ``streams.settings.Settings``
  (``CARWATCH_BROKER_URL``, ``CARWATCH_LABS_TOPIC``, ``CARWATCH_DEADLETTER_TOPIC``, …) unless
  given explicitly.
- A dead letter's ``raw`` is cut to ``MAX_DEAD_LETTER_RAW`` characters (with a marker) so that one
  oversized input cannot exceed the broker's message size limit and block its sender forever.

No patient identifier is ever logged here: log lines name topics, counts and the broker address.
"""

import asyncio
import logging
import signal
import tomllib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Outcome
from streams.ingest.files import InputItem
from streams.ingest.normalise import ResultItem
from streams.logs import configure_logging
from streams.metrics import (
    UNKNOWN_ANALYTE,
    ListenerMetrics,
    MetricsServerError,
    Process,
    serve_metrics,
)
from streams.settings import Settings, bootstrap_servers

log = logging.getLogger(__name__)

#: Seconds a publish call waits for the broker's acknowledgement of all its records.
DEFAULT_TIMEOUT_S: Final = 10.0
#: Characters of ``DeadLetter.raw`` kept (the broker's default message limit is about 1 MB).
MAX_DEAD_LETTER_RAW: Final = 256 * 1024


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

    async def publish(
        self, results: Sequence[LabResult], dead_letters: Sequence[tuple[DeadLetter, str | None]]
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class _Record:
    topic: str
    key: bytes | None
    value: bytes


ProducerFactory = Callable[..., Any]


def _fit(dead_letter: DeadLetter) -> DeadLetter:
    raw = dead_letter.raw
    if len(raw) <= MAX_DEAD_LETTER_RAW:
        return dead_letter
    cut = len(raw) - MAX_DEAD_LETTER_RAW
    return dead_letter.model_copy(
        update={"raw": f"{raw[:MAX_DEAD_LETTER_RAW]}…[{cut} characters cut by carwatch]"}
    )


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

    async def publish_results(self, results: Sequence[LabResult]) -> None:
        """Write ``results`` to the labs topic keyed by patient id; return once all are acked."""
        await self.publish(results, ())

    async def publish_dead_letter(self, dead_letter: DeadLetter, key: str | None) -> None:
        """Write one dead letter (keyed by the patient id when known); return once acked."""
        await self.publish((), ((dead_letter, key),))

    async def publish(
        self, results: Sequence[LabResult], dead_letters: Sequence[tuple[DeadLetter, str | None]]
    ) -> None:
        """Write results and dead letters together; return once the broker acked every one.

        Raises ``BrokerUnavailable`` when it does not within ``timeout_s``.
        """
        records = [
            _Record(self.labs_topic, r.patient_id.encode(), r.model_dump_json().encode())
            for r in results
        ]
        records += [
            _Record(
                self.deadletter_topic,
                key.encode() if key else None,
                _fit(dl).model_dump_json().encode(),
            )
            for dl, key in dead_letters
        ]
        if records:
            await self._send_all(records)

    async def _send_all(self, records: list[_Record]) -> None:
        if self._closed:
            raise BrokerUnavailable("the publisher is shut down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        producer: Any = None
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._ensure_producer()
                futures: list[asyncio.Future[Any]] = []
                for record in records:
                    futures.append(await producer.send(record.topic, record.value, key=record.key))
            # asyncio.wait, not gather: a timeout must not cancel aiokafka's own futures.
            done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
            failures = [f.exception() for f in done if f.exception() is not None]
            if pending or failures:
                first = failures[0] if failures else None
                why = describe(first) if first else f"{len(pending)} not acknowledged in time"
                raise BrokerUnavailable(
                    f"Kafka at {self.bootstrap} did not acknowledge {len(pending) + len(failures)}"
                    f" of {len(records)} record(s) within {self.timeout_s:g} s ({why})"
                )
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
            producer = self._factory(
                **self._connection,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=int(self.timeout_s * 1000),
                linger_ms=0,
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


# --- what a listener publishes and counts for one parsed message/document ---------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """The records one input turns into: results for the labs topic, dead letters (with their
    Kafka key, the patient id when known) for the dead-letter topic, and the tallies."""

    results: list[LabResult]
    dead_letters: list[tuple[DeadLetter, str | None]]
    unmapped: int

    @property
    def rejected(self) -> int:
        return len(self.dead_letters)


def plan_items(
    items: Sequence[ResultItem], *, source: str, prefix: str, received_at: datetime
) -> Plan:
    """Accepted items → results; rejected → dead letters located ``{prefix}:{item location}``;
    unmapped → only counted."""
    results: list[LabResult] = []
    dead: list[tuple[DeadLetter, str | None]] = []
    unmapped = 0
    for item in items:
        outcome = item.outcome
        if isinstance(outcome, LabResult):
            results.append(outcome)
        elif isinstance(outcome, Rejection):
            entry = InputItem(f"{prefix}:{item.location}", item.raw, outcome)
            dead_letter = entry.dead_letter(source, received_at)
            assert dead_letter is not None
            dead.append((dead_letter, outcome.patient_id))
        else:
            unmapped += 1
    return Plan(results, dead, unmapped)


def plan_rejection(
    rejection: Rejection, raw: str, *, source: str, location: str, received_at: datetime
) -> Plan:
    """A whole input rejected (not HL7, not ORU^R01, not JSON, …): one dead letter."""
    dead_letter = InputItem(location, raw, rejection).dead_letter(source, received_at)
    assert dead_letter is not None
    return Plan([], [(dead_letter, rejection.patient_id)], 0)


def count_plan(metrics: ListenerMetrics | None, plan: Plan, adapter: str) -> None:
    """Count a published input: results by analyte and outcome, rejections by reason, dead
    letters by adapter (``mllp``/``fhir``). Call only once the records are acknowledged, so a
    resend after a broker outage is not counted twice."""
    if metrics is None:
        return
    for result in plan.results:
        analyte = result.analyte.value if result.analyte else UNKNOWN_ANALYTE
        metrics.results.labels(analyte, Outcome.ACCEPTED.value).inc()
    if plan.results:
        metrics.last_result_timestamp.set_to_current_time()
    if plan.unmapped:
        metrics.results.labels(UNKNOWN_ANALYTE, Outcome.UNMAPPED.value).inc(plan.unmapped)
    for dead_letter, _ in plan.dead_letters:
        metrics.results.labels(UNKNOWN_ANALYTE, Outcome.REJECTED.value).inc()
        metrics.rejected.labels(dead_letter.reason.value).inc()
        metrics.deadletters.labels(adapter).inc()


# --- plumbing shared by the listener commands -----------------------------------------------------

ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


def load_feed_config(path: str | None, model: type[ConfigModel]) -> ConfigModel:
    """A feed configuration (``Hl7Config``/``FhirConfig`` fields) from a TOML file; defaults
    without one. Raises ``ValueError`` with a one-line explanation."""
    if path is None:
        return model()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read feed config {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"feed config {path} is not TOML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        raise ValueError(f"feed config {path}: {where}: {error['msg']}") from exc


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


def listener_metrics(
    process: Process, port: int | None, ready: Callable[[str], None] | None = None
) -> ListenerMetrics:
    """A listener's metrics in their own registry, served where ``Settings.metrics_address``
    says (``port`` from the command line, else ``CARWATCH_METRICS_*``, else its own port)."""
    metrics = ListenerMetrics()
    try:
        host, port = Settings().metrics_address(process.metrics_port, port)
        bound = serve_metrics(metrics.registry, host, port)
    except (ValueError, MetricsServerError) as exc:
        raise ListenerSetupError(str(exc)) from exc
    if ready is not None:
        ready(f"metrics on http://{host}:{bound}/metrics")
    return metrics


def make_publisher(
    broker_url: str | None, labs_topic: str | None, deadletter_topic: str | None, timeout_s: float
) -> LabPublisher:
    try:
        return LabPublisher(
            broker_url,
            labs_topic=labs_topic,
            deadletter_topic=deadletter_topic,
            timeout_s=timeout_s,
        )
    except ValueError as exc:
        raise ListenerSetupError(str(exc)) from exc


def prepare_listener(
    process: Process,
    broker_url: str | None,
    labs_topic: str | None,
    deadletter_topic: str | None,
    publish_timeout: float,
    metrics_port: int | None,
    log_level: str,
    ready: Callable[[str], None] | None = None,
) -> tuple[LabPublisher, ListenerMetrics]:
    """What every listener command sets up: its Kafka publisher, PHI-safe logging, metrics."""
    publisher = make_publisher(broker_url, labs_topic, deadletter_topic, publish_timeout)
    configure_logging(log_level)
    return publisher, listener_metrics(process, metrics_port, ready)


def serve(listener: Coroutine[Any, Any, None], host: str, port: int) -> None:
    """Run a listener until it stops; an address that cannot be bound is a setup error."""
    try:
        asyncio.run(listener)
    except OSError as exc:
        raise ListenerSetupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def feed_config(path: str | None, model: type[ConfigModel]) -> ConfigModel:
    try:
        return load_feed_config(path, model)
    except ValueError as exc:
        raise ListenerSetupError(str(exc)) from exc
