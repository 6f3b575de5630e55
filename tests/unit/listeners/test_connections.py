"""ConnectionGuard (streams/listeners/connections.py) on loopback: cap, idle timeout, TLS."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.listeners.connections import (
    ConnectionGuard,
    TlsFiles,
    is_loopback,
    serve_guarded,
    warn_if_exposed,
)
from streams.metrics import ListenerMetrics
from tests.integration.feeds.certs import Pki, make_pki


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def serve(guard: ConnectionGuard) -> AsyncIterator[int]:
    server = await serve_guarded(guard, Echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def sample(metrics: ListenerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"listener": "mllp", **labels})


async def echo(port: int, context: ssl.SSLContext | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(b"ping")
    await writer.drain()
    data = await asyncio.wait_for(reader.readexactly(4), 5)
    writer.close()
    return data


async def test_connections_over_the_cap_are_refused_and_counted() -> None:
    metrics = ListenerMetrics(CollectorRegistry())
    guard = ConnectionGuard("mllp", metrics, max_connections=1, idle_timeout_s=30)
    async for port in serve(guard):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hold")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"hold"
        assert sample(metrics, "carwatch_listener_connections_open") == 1
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_reader.read(), 5) == b""  # closed at once
        second.close()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)
        assert await echo(port) == b"ping"  # a slot is free again
    assert sample(metrics, "carwatch_listener_connections_total", outcome="refused") == 1
    assert sample(metrics, "carwatch_listener_connections_total", outcome="accepted") == 2
    assert sample(metrics, "carwatch_listener_received_bytes_total") == 8


async def test_an_idle_connection_is_closed_and_counted() -> None:
    metrics = ListenerMetrics(CollectorRegistry())
    guard = ConnectionGuard("mllp", metrics, idle_timeout_s=0.2)
    async for port in serve(guard):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert sample(metrics, "carwatch_listener_connections_total", outcome="timeout") == 1
    assert sample(metrics, "carwatch_listener_connections_open") == 0


async def test_tls_handshakes_that_fail_are_counted(pki: Pki) -> None:
    metrics = ListenerMetrics(CollectorRegistry())
    files = TlsFiles(pki.server_cert, pki.server_key, client_ca=pki.ca)
    guard = ConnectionGuard("mllp", metrics, tls=files.server_context(), handshake_timeout_s=2)
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    trusted.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async for port in serve(guard):
        assert await echo(port, trusted) == b"ping"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0bMSH|plaintext to a TLS port\x1c\r")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        no_cert = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await echo(port, no_cert)
        await asyncio.sleep(0.1)
    assert sample(metrics, "carwatch_listener_connections_total", outcome="accepted") == 1
    assert sample(metrics, "carwatch_listener_connections_total", outcome="tls_error") == 2
    assert sample(metrics, "carwatch_listener_connections_open") == 0


def test_plaintext_off_loopback_is_warned(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    warn_if_exposed("MLLP listener", "127.0.0.1", tls=False)
    warn_if_exposed("MLLP listener", "0.0.0.0", tls=True)
    assert "without TLS" not in caplog.text
    warn_if_exposed("MLLP listener", "0.0.0.0", tls=False)
    assert "MLLP listener listens on 0.0.0.0 without TLS" in caplog.text
