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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.ingest.hl7.oru import (
    AckCode,
    Hl7Config,
    Hl7Message,
    build_ack,
    error_code_for,
    parse_oru,
)
from streams.listeners.publisher import (
    BrokerUnavailable,
    LabPublisher,
    ListenerSetupError,
    Publisher,
    count_plan,
    feed_config,
    plan_items,
    plan_rejection,
    prepare_listener,
    serve,
    wait_for_signal,
)
from streams.metrics import MLLP, ListenerMetrics

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
#: Characters of MSA-3 / ERR-8 text (MSA-3 is 80 in v2.5.1, but receivers read longer).
MAX_ACK_TEXT: Final = 200
BROKER_DOWN_TEXT: Final = "broker unavailable, retry"
ADAPTER: Final = "mllp"
_WHITESPACE: Final = b" \t\r\n"
_READ_SIZE: Final = 64 * 1024

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


# --- acknowledgment decisions (pure) ------------------------------------------------------------

#: Whole-message rejections answered AR (protocol level); the others (missing_patient_id) AE.
PROTOCOL_REJECTIONS: Final = frozenset(
    {RejectReason.MALFORMED_HL7, RejectReason.UNSUPPORTED_MESSAGE}
)


@dataclass(frozen=True, slots=True)
class AckDecision:
    """MSA-1 code, MSA-3/ERR-8 text, ERR-3 (HL7 table 0357) code; ``retry`` tells the sender
    whether resending the same message can succeed (a broker outage) or not."""

    code: AckCode
    text: str
    error_code: str | None = None
    retry: bool = False


def _clip(text: str, limit: int = MAX_ACK_TEXT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(rejection: Rejection) -> str:
    detail = rejection.details[0]
    return f"{detail.reason.value} {detail.field}" if detail.field else detail.reason.value


def decide_ack(message: Hl7Message) -> AckDecision:
    """The ACK for a message whose records the broker has acknowledged."""
    rejection = message.message_rejection
    if rejection is not None:
        detail = rejection.details[0]
        code: AckCode = "AR" if rejection.reason in PROTOCOL_REJECTIONS else "AE"
        return AckDecision(
            code,
            _clip(
                f"message rejected: {_reason(rejection)}: {detail.message}; do not resend unchanged"
            ),
            error_code_for(rejection.reason),
        )
    rejected = [(i.location, i.outcome) for i in message.items if isinstance(i.outcome, Rejection)]
    accepted = sum(1 for i in message.items if isinstance(i.outcome, LabResult))
    unmapped = len(message.items) - len(rejected) - accepted
    tally = f"{accepted} accepted, {unmapped} not monitored"
    if not rejected:
        return AckDecision("AA", f"{len(message.items)} results: {tally}")
    reasons = "; ".join(f"{location} {_reason(outcome)}" for location, outcome in rejected)
    return AckDecision(
        "AE",
        _clip(f"{len(rejected)} of {len(message.items)} results rejected ({tally}): {reasons}"),
        error_code_for(rejected[0][1].reason),
    )


def broker_unavailable_ack() -> AckDecision:
    """Kafka did not confirm: nothing is acknowledged, the sender must retry."""
    return AckDecision("AR", BROKER_DOWN_TEXT, "207", retry=True)


def frame_too_large_ack(size: int, limit: int) -> AckDecision:
    return AckDecision(
        "AR",
        f"message rejected: {size} bytes exceed the limit of {limit} bytes; do not resend unchanged",
        "207",
    )


# --- the service ----------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back for one event: an ACK (unframed) or nothing, and whether to hang up."""

    ack: bytes | None
    close: bool = False


def _declares_latin1(payload: bytes) -> bool:
    first = payload.lstrip(b"\x0b\r\n\t ").split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return False
    parts = first.split(first[3:4])
    return len(parts) > 17 and parts[17].strip().upper() == b"8859/1"


@dataclass
class MllpService:
    """Handles MLLP events of one listener (all connections share it and its publisher)."""

    publisher: Publisher
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
        """Parse, publish, and only then acknowledge one message."""
        received_at = self.clock()
        message = parse_oru(payload, self.config, self.policy)
        where = f"message {message.control_id or '(no MSH-10)'}"
        if message.message_rejection is not None:
            plan = plan_rejection(
                message.message_rejection,
                self._text(payload),
                source=self.source,
                location=where,
                received_at=received_at,
            )
        else:
            plan = plan_items(
                message.items, source=self.source, prefix=where, received_at=received_at
            )
        try:
            await self.publisher.publish(plan.results, plan.dead_letters)
        except BrokerUnavailable as exc:
            log.warning("%s not acknowledged (%s)", where, exc)
            return self._broker_down(message, payload)
        count_plan(self.metrics, plan, ADAPTER)
        decision = decide_ack(message)
        level = logging.DEBUG if decision.code == "AA" else logging.INFO
        log.log(
            level,
            "%s: %s (%d published, %d dead-lettered, %d not monitored)",
            where,
            decision.code,
            len(plan.results),
            plan.rejected,
            plan.unmapped,
        )
        return Reply(self._ack(message, payload, decision))

    async def _too_large(self, event: FrameTooLarge, peer: str) -> Reply:
        head = event.head[: event.head.rfind(b"\r")] if b"\r" in event.head else event.head
        message = parse_oru(head, self.config, self.policy)
        where = f"message {message.control_id or '(no MSH-10)'}"
        rejection = Rejection.of(
            RejectReason.MALFORMED_HL7,
            f"MLLP block of {event.size} bytes exceeds the limit of {self.max_frame_bytes} bytes",
        )
        plan = plan_rejection(
            rejection,
            self._text(event.head) + f"…[{event.size - len(event.head)} bytes not kept]",
            source=self.source,
            location=where,
            received_at=self.clock(),
        )
        log.warning("%s: %s from %s: %d bytes, over the limit", where, "AR", peer, event.size)
        try:
            await self.publisher.publish((), plan.dead_letters)
        except BrokerUnavailable as exc:
            log.warning("%s not acknowledged (%s)", where, exc)
            return self._broker_down(message, event.head)
        count_plan(self.metrics, plan, ADAPTER)
        decision = frame_too_large_ack(event.size, self.max_frame_bytes)
        return Reply(self._ack(message, event.head, decision))

    def _broker_down(self, message: Hl7Message, payload: bytes) -> Reply:
        if self.broker_down == "close":
            return Reply(None, close=True)
        return Reply(self._ack(message, payload, broker_unavailable_ack()))

    def _ack(self, message: Hl7Message, payload: bytes, decision: AckDecision) -> bytes:
        text = build_ack(
            message.control_id,
            decision.code,
            decision.text,
            now=self.clock(),
            header=message.header,
            error_code=decision.error_code,
        )
        if _declares_latin1(payload):
            return text.encode("latin-1", errors="replace")
        return text.encode("utf-8")

    @staticmethod
    def _text(payload: bytes) -> str:
        encoding = "latin-1" if _declares_latin1(payload) else "utf-8"
        return payload.decode(encoding, errors="replace")


# --- the listener ---------------------------------------------------------------------------------


class MllpListener:
    """An asyncio TCP server speaking MLLP; one task per connection, messages in order."""

    def __init__(
        self, service: MllpService, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("MLLP listener on %s:%d", self.host, self.port)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting; let connections finish the message in hand for ``grace_s``."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        log.info("%s: connected", peer)
        deframer = MllpDeframer(self.service.max_frame_bytes)
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                for event in deframer.feed(data) if data else deframer.close():
                    reply = await self.service.respond(event, peer)
                    if reply.ack is not None:
                        writer.write(frame(reply.ack))
                        await writer.drain()
                    if reply.close:
                        log.warning("%s: closing without ACK (broker unavailable)", peer)
                        return
                if not data:
                    break
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost (%s)", peer, type(exc).__name__)
        except Exception:  # a bug: hang up without an ACK, so the sender resends
            log.exception("%s: internal error; closing without ACK", peer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            log.info("%s: disconnected", peer)


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
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """``carwatch mllp``: listen until SIGINT/SIGTERM (or ``stop``), then close gracefully."""
    async with publisher:
        service = MllpService(publisher, config, policy, metrics, max_frame_bytes, broker_down)
        listener = MllpListener(service, host, port)
        await listener.start()
        try:
            if ready is not None:
                ready(
                    f"listening on {host}:{listener.port} (MLLP); Kafka {publisher.bootstrap} "
                    f"({publisher.labs_topic}, {publisher.deadletter_topic})"
                )
            await (stop.wait() if stop is not None else wait_for_signal())
        finally:
            await listener.close(grace_s=publisher.timeout_s + 1)
            log.info("MLLP listener on %s:%d stopped", host, listener.port)


def main(
    *,
    host: str,
    port: int,
    broker_url: str | None,
    labs_topic: str | None,
    deadletter_topic: str | None,
    publish_timeout: float,
    feed_config_path: str | None,
    policy: Policy,
    max_frame_bytes: int,
    broker_down: str,
    metrics_port: int | None,
    log_level: str,
    ready: Callable[[str], None] | None = None,
) -> None:
    """The ``carwatch mllp`` command; ``ListenerSetupError`` when it cannot start."""
    if broker_down not in ("ar", "close"):
        raise ListenerSetupError(f"--broker-down must be ar or close, not {broker_down!r}")
    config = feed_config(feed_config_path, Hl7Config)
    publisher, metrics = prepare_listener(
        MLLP,
        broker_url,
        labs_topic,
        deadletter_topic,
        publish_timeout,
        metrics_port,
        log_level,
        ready,
    )
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
            ready=ready,
        ),
        host,
        port,
    )
