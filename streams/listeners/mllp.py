"""HL7 v2 over MLLP: the ``carwatch mllp`` listener (docs/feeds.md sections 1 and 8).

Transport: the Minimal Lower Layer Protocol of HL7 v2 (Implementation Guide appendix C): every
message is one block ``0x0B`` (VT) … ``0x1C 0x0D`` (FS CR). ``MllpDeframer`` cuts a byte stream
into blocks, whatever the reads look like (a block split over many reads, many blocks in one
read). Tolerated: whitespace between blocks, in particular the stray LF that some senders put
after the trailer (``0x1C 0x0D 0x0A``). Reported, never answered: other bytes outside a block
(``Garbage``) and a block cut short by a new start byte or the end of the connection
(``IncompleteFrame``) — there is no message to acknowledge. A block larger than
``max_frame_bytes`` is not buffered: its bytes are dropped up to its trailer, then it is answered
``AR`` and its first bytes are dead-lettered (``FrameTooLarge``).

Per connection, messages are handled strictly one after the other (original acknowledgment
mode: the sender waits for each ACK). For each message:

1. ``parse_oru`` (never raises) → one outcome per OBX, or a whole-message rejection.
2. Accepted results → ``carwatch.labs``; rejected OBX and whole-message rejections →
   ``carwatch.deadletter`` (raw + reasons); unmapped results are only counted. All of a
   message's records are written together and the broker's acknowledgement of every one is
   awaited (``LabPublisher``).
3. Only then the ACK (``decide_ack``):

   - ``AA`` every OBX accepted or unmapped, and written;
   - ``AE`` the message was read but some or all of its content was rejected (an OBX, or
     ``missing_patient_id``): the good results *are* written, the rejected ones are on the
     dead-letter topic; MSA-3 and ERR name the reason codes. Do not resend unchanged;
   - ``AR`` the message is unusable at the protocol level — not HL7 (``malformed_hl7``, ERR-3
     ``102``), not ORU^R01 (``unsupported_message``, ``200``), too large (``207``, text says so):
     dead-lettered, do not resend unchanged;
   - ``AR`` with ERR-3 ``207`` and MSA-3 ``broker unavailable, retry`` when Kafka did not
     confirm within the publish timeout: **nothing** of the message is confirmed, the sender
     retries (``--broker-down close`` instead closes the connection without an ACK, for
     engines that only retry on a missing ACK). ``AA`` is never sent while the broker is
     unreachable.

Logging never carries patient data: control ids (MSH-10), counts, reason codes and the peer's
address only.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.ingest.hl7.oru import Hl7Config, Hl7Message, build_ack, parse_oru
from streams.listeners.connections import (
    ConnectionGuard,
    ListenerLimits,
    TlsFiles,
    describe_peer,
    serve_guarded,
    warn_if_exposed,
)
from streams.listeners.hl7_ack import (
    BROKER_DOWN_TEXT,
    AckDecision,
    broker_unavailable_ack,
    decide_ack,
    frame_too_large_ack,
    parse_timeout_ack,
)
from streams.listeners.jobs import Hl7Outcome, declares_latin1, hl7_job, hl7_text
from streams.listeners.plans import Plan, plan_rejection
from streams.listeners.pool import ParsePool, ParseTimeout
from streams.listeners.publisher import (
    BrokerUnavailable,
    KafkaOptions,
    LabPublisher,
    ListenerSetupError,
    Publisher,
    count_plan,
    feed_config,
    prepare_listener,
    serve,
    wait_for_signal,
)
from streams.metrics import MLLP, ListenerMetrics

__all__ = ["BROKER_DOWN_TEXT", "decide_ack"]

log = logging.getLogger(__name__)

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\x0d"
TRAILER: Final = END_BLOCK + CARRIAGE_RETURN
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 2575
#: Largest accepted message (bytes between the start block and the trailer).
DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024
#: Bytes of an oversized block kept for its dead letter and for reading its MSH.
HEAD_BYTES: Final = 4096
ADAPTER: Final = "mllp"
_WHITESPACE: Final = b" \t\r\n"

BrokerDown = Literal["ar", "close"]


# --- framing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete MLLP block: the message bytes without start block and trailer."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """A complete block over the size limit: ``size`` bytes, of which ``head`` is the start."""

    size: int
    head: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """``size`` bytes other than whitespace outside any block (dropped)."""

    size: int


@dataclass(frozen=True, slots=True)
class IncompleteFrame:
    """A block of ``size`` bytes cut short by a new start block or the end of the stream."""

    size: int


FrameEvent = Frame | FrameTooLarge | Garbage | IncompleteFrame


def frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block."""
    return START_BLOCK + payload + TRAILER


class MllpDeframer:
    """Incremental MLLP deframer: ``feed`` the bytes of each read, get the events they complete.

    Memory is bounded by ``max_frame_bytes`` plus one read: an oversized block is dropped as it
    streams in, keeping only its first ``HEAD_BYTES``.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._scan_from = 0
        # Set while dropping an oversized block: bytes dropped so far and the kept head.
        self._dropped: int | None = None
        self._head = b""

    def feed(self, data: bytes) -> list[FrameEvent]:
        self._buffer += data
        events: list[FrameEvent] = []
        while self._step(events):
            pass
        return events

    @property
    def in_frame(self) -> bool:
        """Whether a block has started and not ended (the listener's read timeout runs)."""
        return self._in_frame

    def close(self) -> list[FrameEvent]:
        """The end of the stream: a block still open is reported as incomplete."""
        events: list[FrameEvent] = []
        if self._dropped is not None:
            events.append(IncompleteFrame(self._dropped + len(self._buffer)))
        elif self._in_frame:
            events.append(IncompleteFrame(len(self._buffer)))
        else:
            junk = len(bytes(self._buffer).translate(None, _WHITESPACE))
            if junk:
                events.append(Garbage(junk))
        self._buffer.clear()
        self._in_frame = False
        self._dropped = None
        return events

    def _step(self, events: list[FrameEvent]) -> bool:
        """Consume what can be consumed; ``False`` when more bytes are needed."""
        buffer = self._buffer
        if not self._in_frame:
            start = buffer.find(START_BLOCK)
            outside = buffer if start == -1 else buffer[:start]
            junk = len(bytes(outside).translate(None, _WHITESPACE))
            if junk:
                events.append(Garbage(junk))
            if start == -1:
                buffer.clear()
                return False
            del buffer[: start + 1]
            self._in_frame = True
            self._scan_from = 0
            return True
        end = buffer.find(TRAILER, self._scan_from)
        restart = buffer.find(START_BLOCK, self._scan_from, len(buffer) if end == -1 else end)
        if restart != -1:
            dropped = self._dropped or 0
            events.append(IncompleteFrame(dropped + restart))
            del buffer[: restart + 1]
            self._scan_from = 0
            self._dropped = None
            return True
        if end == -1:
            keep = 1 if buffer.endswith(END_BLOCK) else 0
            if self._dropped is not None or len(buffer) > self.max_frame_bytes:
                if self._dropped is None:
                    self._head = bytes(buffer[:HEAD_BYTES])
                    self._dropped = 0
                self._dropped += len(buffer) - keep
                del buffer[: len(buffer) - keep]
                self._scan_from = 0
            else:
                self._scan_from = max(0, len(buffer) - 1)
            return False
        if self._dropped is not None:
            events.append(FrameTooLarge(self._dropped + end, self._head))
        elif end > self.max_frame_bytes:
            events.append(FrameTooLarge(end, bytes(buffer[:HEAD_BYTES])))
        else:
            events.append(Frame(bytes(buffer[:end])))
        del buffer[: end + len(TRAILER)]
        self._in_frame = False
        self._dropped = None
        self._head = b""
        self._scan_from = 0
        return True


# --- the service ----------------------------------------------------------------------------------

#: MIME type of an ER7-encoded (pipe-delimited) HL7 v2 message in the message store.
HL7_CONTENT_TYPE: Final = "x-application/hl7-v2+er7"
DEFAULT_IDLE_TIMEOUT_S: Final = 600.0
DEFAULT_READ_TIMEOUT_S: Final = 30.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back for one event: an ACK (unframed) or nothing, and whether to hang up."""

    ack: bytes | None
    close: bool = False


def _head_message(head: bytes, config: Hl7Config, policy: Policy) -> Hl7Message:
    """The MSH of a message that is not parsed whole (too large, too slow), for its ACK."""
    cut = head[:HEAD_BYTES]
    return parse_oru(cut[: cut.rfind(b"\r")] if b"\r" in cut else cut, config, policy)


@dataclass
class MllpService:
    """Handles MLLP events of one listener (all connections share it, its pool, its publisher).

    Per message: the raw message goes to the message store while a pool worker parses it; the
    results and dead letters are published; only then the ACK (see the module docstring).
    """

    publisher: Publisher
    pool: ParsePool
    config: Hl7Config = field(default_factory=Hl7Config)
    policy: Policy = DEFAULT_POLICY
    metrics: ListenerMetrics | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    broker_down: BrokerDown = "ar"
    clock: Callable[[], datetime] = _utc_now
    source: str = ADAPTER

    async def respond(self, event: FrameEvent, peer: str = "?") -> Reply:
        if isinstance(event, Frame):
            return await self.handle_message(event.payload)
        if isinstance(event, FrameTooLarge):
            return await self._too_large(event, peer)
        if isinstance(event, Garbage):
            log.warning("%s: dropped %d bytes outside MLLP blocks", peer, event.size)
        else:
            log.warning("%s: dropped an MLLP block of %d bytes without trailer", peer, event.size)
        return Reply(None)

    async def handle_message(self, payload: bytes) -> Reply:
        """Store, parse, publish, and only then acknowledge one message."""
        received_at = self.clock()
        message_id = uuid.uuid4().hex
        store = asyncio.ensure_future(
            self.publisher.store_inbound(
                payload, self.feed, HL7_CONTENT_TYPE, received_at, message_id
            )
        )
        try:
            outcome = await self.pool.run(
                hl7_job, payload, self.config, self.policy, self.source, received_at, message_id
            )
        except ParseTimeout:
            outcome = self._unparsed(payload, received_at, message_id)
        except BaseException:
            store.cancel()
            raise
        if self.metrics is not None:
            self.metrics.parse_seconds.labels(ADAPTER).observe(outcome.seconds)
        where = f"message {outcome.control_id or '(no MSH-10)'}"
        if not await self._stored(store, where):
            return self._broker_down(outcome, payload)
        if not await self._published(outcome.plan, where):
            return self._broker_down(outcome, payload)
        count_plan(self.metrics, outcome.plan, ADAPTER)
        decision = outcome.decision
        level = logging.DEBUG if decision.code == "AA" else logging.INFO
        log.log(
            level,
            "%s: %s (%d published, %d dead-lettered, %d not monitored)",
            where,
            decision.code,
            len(outcome.plan.results),
            outcome.plan.rejected,
            outcome.plan.unmapped,
        )
        return Reply(self._ack(outcome, payload, decision))

    @property
    def feed(self) -> str:
        return self.config.source or ADAPTER

    def _unparsed(self, payload: bytes, received_at: datetime, message_id: str) -> Hl7Outcome:
        """A message the pool could not parse in time: rejected whole, ACK from its MSH."""
        message = _head_message(payload, self.config, self.policy)
        rejection = Rejection.of(
            RejectReason.MALFORMED_HL7, f"not parsed within {self.pool.timeout_s:g} s"
        )
        plan = plan_rejection(
            rejection,
            hl7_text(payload),
            source=self.source,
            location=f"message {message.control_id or '(no MSH-10)'}",
            received_at=received_at,
            inbound=message_id,
        )
        decision = parse_timeout_ack(self.pool.timeout_s)
        return Hl7Outcome(message.control_id, message.header, decision, plan, self.pool.timeout_s)

    async def _stored(self, store: "asyncio.Future[str]", where: str) -> bool:
        try:
            reference = await store
        except BrokerUnavailable as exc:
            self._publish_failed("carwatch.inbound", where, exc)
            return False
        if self.metrics is not None:
            self.metrics.inbound.labels(ADAPTER).inc()
        log.debug("%s stored as %s", where, reference)
        return True

    async def _published(self, plan: Plan, where: str) -> bool:
        try:
            await self.publisher.publish(plan)
        except BrokerUnavailable as exc:
            self._publish_failed("carwatch.labs", where, exc)
            return False
        return True

    def _publish_failed(self, topic: str, where: str, exc: Exception) -> None:
        log.warning("%s not acknowledged (%s)", where, exc)
        if self.metrics is not None:
            self.metrics.publish_failures.labels(ADAPTER, topic).inc()

    async def _too_large(self, event: FrameTooLarge, peer: str) -> Reply:
        received_at = self.clock()
        message = _head_message(event.head, self.config, self.policy)
        where = f"message {message.control_id or '(no MSH-10)'}"
        rejection = Rejection.of(
            RejectReason.MALFORMED_HL7,
            f"MLLP block of {event.size} bytes exceeds the limit of {self.max_frame_bytes} bytes",
        )
        plan = plan_rejection(
            rejection,
            hl7_text(event.head) + f"…[{event.size - len(event.head)} bytes not kept]",
            source=self.source,
            location=where,
            received_at=received_at,
        )
        log.warning("%s: AR to %s: %d bytes, over the limit", where, peer, event.size)
        decision = frame_too_large_ack(event.size, self.max_frame_bytes)
        outcome = Hl7Outcome(message.control_id, message.header, decision, plan, 0.0)
        if not await self._published(plan, where):
            return self._broker_down(outcome, event.head)
        count_plan(self.metrics, plan, ADAPTER)
        return Reply(self._ack(outcome, event.head, decision))

    def _broker_down(self, outcome: Hl7Outcome, payload: bytes) -> Reply:
        if self.broker_down == "close":
            return Reply(None, close=True)
        return Reply(self._ack(outcome, payload, broker_unavailable_ack()))

    def _ack(self, outcome: Hl7Outcome, payload: bytes, decision: AckDecision) -> bytes:
        if self.metrics is not None:
            self.metrics.messages.labels(ADAPTER, decision.code).inc()
        text = build_ack(
            outcome.control_id,
            decision.code,
            decision.text,
            now=self.clock(),
            header=outcome.header,
            error_code=decision.error_code,
        )
        if declares_latin1(payload):
            return text.encode("latin-1", errors="replace")
        return text.encode("utf-8")


# --- the listener ---------------------------------------------------------------------------------

#: Unanswered messages a connection may have queued before its reads pause (pipelining senders).
MAX_QUEUED_EVENTS: Final = 8


class _MllpConnection(asyncio.Protocol):
    """One MLLP connection: deframes the byte stream, answers its messages strictly in order,
    and closes a message that started but does not finish within ``read_timeout_s``."""

    def __init__(self, listener: "MllpListener") -> None:
        self.listener = listener
        self.deframer = MllpDeframer(listener.service.max_frame_bytes)
        self.events: asyncio.Queue[FrameEvent | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.read_timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = describe_peer(transport)
        log.info("%s: connected", self.peer)
        self.worker = asyncio.ensure_future(self._answer())
        self.listener.connections.add(self.worker)
        self.worker.add_done_callback(self.listener.connections.discard)

    def data_received(self, data: bytes) -> None:
        for event in self.deframer.feed(data):
            self.events.put_nowait(event)
        self._watch_read()
        if self.events.qsize() >= MAX_QUEUED_EVENTS and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def eof_received(self) -> bool | None:
        for event in self.deframer.close():
            self.events.put_nowait(event)
        self.events.put_nowait(None)
        return True  # keep the write side open for the last ACKs

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        self.events.put_nowait(None)
        log.info("%s: disconnected", self.peer)

    def _watch_read(self) -> None:
        """A block that started must finish within the read timeout (slow or stuck senders)."""
        if self.deframer.in_frame and self.read_timer is None:
            loop = asyncio.get_running_loop()
            timeout = self.listener.read_timeout_s
            self.read_timer = loop.call_later(timeout, self._read_timed_out)
        elif not self.deframer.in_frame:
            self._stop_read_timer()

    def _stop_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self) -> None:
        self.read_timer = None
        guard = self.listener.guard
        guard.count("timeout")
        log.warning(
            "%s: message not finished within %.0f s; closing",
            self.peer,
            self.listener.read_timeout_s,
        )
        if self.transport is not None:
            self.transport.close()

    async def _answer(self) -> None:
        service = self.listener.service
        try:
            while (event := await self.events.get()) is not None:
                reply = await service.respond(event, self.peer)
                if self.transport is None or self.transport.is_closing():
                    return
                if reply.ack is not None:
                    self.transport.write(frame(reply.ack))
                if reply.close:
                    log.warning("%s: closing without ACK (broker unavailable)", self.peer)
                    self.transport.close()
                    return
                if self.paused and self.events.qsize() < MAX_QUEUED_EVENTS // 2:
                    self.paused = False
                    self.transport.resume_reading()
        except Exception:  # a bug: hang up without an ACK, so the sender resends
            log.exception("%s: internal error; closing without ACK", self.peer)
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()


class MllpListener:
    """An asyncio TCP (or TLS) server speaking MLLP, behind a ``ConnectionGuard``."""

    def __init__(
        self,
        service: MllpService,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        guard: ConnectionGuard | None = None,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.guard = guard or ConnectionGuard(ADAPTER, service.metrics)
        self.read_timeout_s = read_timeout_s
        self.connections: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await serve_guarded(
            self.guard, lambda: _MllpConnection(self), self.host, self.port
        )
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        tls = self.guard.tls is not None
        warn_if_exposed("MLLP listener", self.host, tls)
        log.info("MLLP%s listener on %s:%d", "/TLS" if tls else "", self.host, self.port)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting; let connections finish the message in hand for ``grace_s``."""
        if self._server is not None:
            self._server.close()
        if self.connections:
            _, pending = await asyncio.wait(self.connections, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


async def run(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    publisher: LabPublisher,
    config: Hl7Config,
    policy: Policy = DEFAULT_POLICY,
    metrics: ListenerMetrics | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    broker_down: BrokerDown = "ar",
    limits: ListenerLimits | None = None,
    tls: TlsFiles | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """``carwatch mllp``: listen until SIGINT/SIGTERM (or ``stop``), then close gracefully."""
    limits = limits or ListenerLimits(idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S)
    log.info(
        "HL7 timestamps without an offset are read in MSH-7's offset, else in %s",
        config.zone_name(policy),
    )
    pool = limits.pool()
    await pool.start()
    try:
        async with publisher:
            service = MllpService(
                publisher, pool, config, policy, metrics, max_frame_bytes, broker_down
            )
            guard = limits.guard(ADAPTER, metrics, tls)
            listener = MllpListener(
                service, host, port, guard=guard, read_timeout_s=limits.read_timeout_s
            )
            await listener.start()
            try:
                if ready is not None:
                    scheme = "MLLP/TLS" if tls else "MLLP"
                    ready(
                        f"listening on {host}:{listener.port} ({scheme}); Kafka "
                        f"{publisher.bootstrap} ({publisher.labs_topic}, "
                        f"{publisher.deadletter_topic}, {publisher.inbound_topic}); local times in "
                        f"{config.zone_name(policy)} unless MSH-7 has an offset"
                    )
                await (stop.wait() if stop is not None else wait_for_signal())
            finally:
                await listener.close(grace_s=publisher.timeout_s + 1)
                log.info("MLLP listener on %s:%d stopped", host, listener.port)
    finally:
        await pool.close()


def main(
    *,
    host: str,
    port: int,
    kafka: KafkaOptions,
    feed_config_path: str | None,
    policy: Policy,
    max_frame_bytes: int,
    broker_down: str,
    metrics_port: int | None,
    log_level: str,
    limits: ListenerLimits,
    tls: TlsFiles | None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """The ``carwatch mllp`` command; ``ListenerSetupError`` when it cannot start."""
    if broker_down not in ("ar", "close"):
        raise ListenerSetupError(f"--broker-down must be ar or close, not {broker_down!r}")
    config = feed_config(feed_config_path, Hl7Config)
    publisher, metrics = prepare_listener(MLLP, kafka, metrics_port, log_level, ready)
    serve(
        run(
            host=host,
            port=port,
            publisher=publisher,
            config=config,
            policy=policy,
            metrics=metrics,
            max_frame_bytes=max_frame_bytes,
            broker_down="ar" if broker_down == "ar" else "close",
            limits=limits,
            tls=tls,
            ready=ready,
        ),
        host,
        port,
    )
