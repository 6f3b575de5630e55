"""The web's ingester while the broker is away (streams/web/ingest.py, streams/kafka_clients.py):
each attempt fails at once with an OSError that its loop retries, and leaves no kafka-python IO
thread behind (a consumer whose constructor fails keeps one running for good)."""

import socket
import threading

import pytest

from streams.core.policy import DEFAULT_POLICY
from streams.settings import Settings
from streams.web.db import Database
from streams.web.ingest import Ingester
from streams.web.metrics import WebMetrics


def kafka_threads() -> int:
    return sum(thread.name.startswith("kafka-io") for thread in threading.enumerate())


def test_an_attempt_against_an_absent_broker_fails_fast_and_leaks_no_thread(db: Database) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = probe.getsockname()[1]
        settings = Settings(broker_url=f"kafka://127.0.0.1:{port}", create_topics=False)
        ingester = Ingester(settings, db, DEFAULT_POLICY, WebMetrics())
        before = kafka_threads()
        for _ in range(3):
            with pytest.raises(OSError):
                ingester.step()
    assert kafka_threads() == before
