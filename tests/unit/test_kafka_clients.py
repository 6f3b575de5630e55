"""streams/kafka_clients.py: kafka-python clients are built only when a broker answers."""

import socket

import pytest

from streams.kafka_clients import require_reachable


def test_a_listening_server_is_reachable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        require_reachable(f"127.0.0.1:1,127.0.0.1:{port}")


def test_no_listening_server_raises_oserror() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(OSError):
            require_reachable(f"127.0.0.1:{port}")
    with pytest.raises(OSError):
        require_reachable("no-port-here")
