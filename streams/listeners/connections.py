"""Connection limits and TLS shared by the MLLP listener and the FHIR gateway.

``ConnectionGuard.factory(make)`` wraps a listener's asyncio protocol factory:

- a connection cap: beyond ``max_connections`` open connections a new one is closed at once
  (``refused``), so a flood of sockets cannot exhaust memory or file descriptors;
- TLS done here, not by ``create_server(ssl=...)``: the handshake runs under
  ``loop.start_tls`` with a time bound, so a failed or stalled handshake is seen and counted
  (``tls_error``) instead of disappearing into asyncio's exception handler. With a client CA the
  peer must present a certificate it signed (mutual TLS);
- an idle timeout: a connection that sends no byte for ``idle_timeout_s`` is closed
  (``timeout``): a sender that went away without closing, or a slow-loris holding a slot;
- counting: open connections (gauge), accepted/refused/timeout/tls_error, bytes received.

The wrapped protocol sees a plain stream of (decrypted) bytes; a listener adds its own read
timeout for a message that started and does not finish.
"""

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from streams.listeners.pool import (
    DEFAULT_PARSE_TIMEOUT_S,
    DEFAULT_WORKERS,
    ParsePool,
    PoolMode,
)
from streams.metrics import ListenerMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 64
DEFAULT_HANDSHAKE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Certificate chain and key of the listener; ``client_ca`` turns on mutual TLS."""

    certfile: Path
    keyfile: Path | None = None
    client_ca: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
        if self.client_ca is not None:
            context.load_verify_locations(cafile=str(self.client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """The limits of one listener (defaults documented in docs/feeds.md "Limits")."""

    idle_timeout_s: float
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    read_timeout_s: float = 30.0
    handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S
    parse_workers: int = DEFAULT_WORKERS
    parse_mode: PoolMode = "process"
    parse_timeout_s: float = DEFAULT_PARSE_TIMEOUT_S

    def pool(self) -> ParsePool:
        return ParsePool(self.parse_workers, mode=self.parse_mode, timeout_s=self.parse_timeout_s)

    def guard(
        self, listener: str, metrics: ListenerMetrics | None, tls: TlsFiles | None
    ) -> "ConnectionGuard":
        return ConnectionGuard(
            listener,
            metrics,
            max_connections=self.max_connections,
            idle_timeout_s=self.idle_timeout_s,
            tls=tls.server_context() if tls is not None else None,
            handshake_timeout_s=self.handshake_timeout_s,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(listener: str, host: str, tls: bool) -> None:
    """Plaintext is the loopback default; anywhere else it carries patient data in clear."""
    if not tls and not is_loopback(host):
        log.warning(
            "%s listens on %s without TLS: patient data crosses the network in clear; "
            "set a certificate (--tls-cert/--tls-key) or bind 127.0.0.1",
            listener,
            host,
        )


class ConnectionGuard:
    """Cap, TLS, idle timeout and counting for one listener's connections."""

    def __init__(
        self,
        listener: str,
        metrics: ListenerMetrics | None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = 600.0,
        tls: ssl.SSLContext | None = None,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.listener = listener
        self.metrics = metrics
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.tls = tls
        self.handshake_timeout_s = handshake_timeout_s
        self.open = 0
        if metrics is not None:
            metrics.connections_open.labels(listener).set_function(lambda: self.open)

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.connections.labels(self.listener, outcome).inc()

    def received(self, size: int) -> None:
        if self.metrics is not None:
            self.metrics.received_bytes.labels(self.listener).inc(size)

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, make)


class _Guarded(asyncio.Protocol):
    """Delegates to the listener's protocol once the connection is admitted (and TLS is up)."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.make = make
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Task[None] | None = None
        #: bytes that arrive between the TLS handshake and ``start_tls`` returning
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        if guard.open >= guard.max_connections:
            guard.count("refused")
            log.warning("%s: connection refused: %d open (the cap)", guard.listener, guard.open)
            transport.close()
            return
        guard.open += 1
        self.admitted = True
        self.transport = transport
        if guard.tls is None:
            self._attach(transport)
        else:
            self.handshake = asyncio.ensure_future(self._start_tls(transport))

    async def _start_tls(self, raw: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        assert self.guard.tls is not None
        try:
            secured = await loop.start_tls(
                raw,  # type: ignore[arg-type]
                self,
                self.guard.tls,
                server_side=True,
                ssl_handshake_timeout=self.guard.handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.guard.count("tls_error")
            log.warning("%s: TLS handshake failed (%s)", self.guard.listener, type(exc).__name__)
            raw.close()
            self._release()
            return
        if secured is None:  # the peer went away during the handshake
            self._release()
            return
        self.transport = secured
        self._attach(secured)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self.guard.count("accepted")
        self.inner = self.make()
        self.inner.connection_made(transport)
        self._arm()
        early, self.early = self.early, []
        for data in early:
            self.inner.data_received(data)

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.idle_timeout_s, self._idle)

    def _idle(self) -> None:
        self.guard.count("timeout")
        log.info(
            "%s: closing a connection idle for %.0f s",
            self.guard.listener,
            self.guard.idle_timeout_s,
        )
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.guard.received(len(data))
        self._arm()
        if self.inner is not None:
            self.inner.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake is not None and not self.handshake.done():
            self.handshake.cancel()
        self._release()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.admitted = False
            self.guard.open -= 1


async def serve_guarded(
    guard: ConnectionGuard, make: Callable[[], asyncio.Protocol], host: str, port: int
) -> asyncio.Server:
    """A TCP server on ``host:port`` whose connections pass the guard."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(guard.factory(make), host, port)


def describe_peer(transport: Any) -> str:
    address = transport.get_extra_info("peername") if transport is not None else None
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
