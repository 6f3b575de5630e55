"""Fixtures of the network-listener tests on the real broker (``broker``/``pipeline`` of
tests/integration/conftest.py): this test's topics, a bounded consumer, feed configurations.
"""

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from schemas.vocab import Analyte, MrdMethod
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.pool import ParsePool
from streams.listeners.publisher import LabPublisher

LOCAL_CODES = {"MRD-FLOW": Analyte.MRD, "MRD-NGS": Analyte.MRD, "MRD-PCR": Analyte.MRD}
MRD_METHODS = {"MRD-NGS": MrdMethod.NGS}
#: The synthetic KIDS-LAB feed of tests/data (as in tests/unit/conftest.py).
HL7_CONFIG = Hl7Config(assigning_authority="KIDS", local_codes=LOCAL_CODES, mrd_methods=MRD_METHODS)
FHIR_CONFIG = FhirConfig(local_codes=LOCAL_CODES, mrd_methods=MRD_METHODS)


@dataclass(frozen=True)
class Topics:
    bootstrap: str
    labs: str
    deadletter: str
    inbound: str

    def publisher(self, timeout_s: float = 10) -> LabPublisher:
        return LabPublisher(
            self.bootstrap,
            labs_topic=self.labs,
            deadletter_topic=self.deadletter,
            inbound_topic=self.inbound,
            timeout_s=timeout_s,
        )


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()


@pytest.fixture
def topics(pipeline: Any) -> Topics:
    """This test's own labs and dead-letter topics (created by the ``pipeline`` fixture of
    tests/integration/conftest.py on the session broker)."""
    return Topics(pipeline.broker.bootstrap, pipeline.labs, pipeline.deadletter, pipeline.inbound)


async def consume_records(
    bootstrap: str, topic: str, count: int, timeout_s: float = 30
) -> list[Record]:
    """Every record of ``topic``: read from the beginning up to the end offsets (so surplus
    records, i.e. duplicates, are seen too), waiting until at least ``count`` are there.
    Bounded by ``timeout_s``."""
    # Without a group, a subscription is assigned every partition of the topic.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[Record] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def fetch() -> None:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for batch in batches.values():
                records.extend(
                    Record(m.key, m.value, m.partition, m.offset, tuple(m.headers)) for m in batch
                )

        while not consumer.assignment() and loop.time() < deadline:
            await fetch()
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while loop.time() < deadline:
            positions = {tp: await consumer.position(tp) for tp in ends}
            at_end = all(positions[tp] >= end for tp, end in ends.items())
            if at_end and len(records) >= count:
                break
            await fetch()
    finally:
        await consumer.stop()
    return records


Consume = Callable[[str, int, float], Awaitable[list[Record]]]


@pytest.fixture
def consume(topics: Topics) -> Consume:
    """``await consume(topic, count, timeout_s)`` on this test's broker."""

    async def read(topic: str, count: int, timeout_s: float = 30) -> list[Record]:
        return await consume_records(topics.bootstrap, topic, count, timeout_s)

    return read


@pytest.fixture
def hl7_config() -> Hl7Config:
    return HL7_CONFIG


@pytest.fixture
def fhir_config() -> FhirConfig:
    return FHIR_CONFIG


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (a broker that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def thread_pool() -> AsyncIterator[ParsePool]:
    """A parse pool of threads (starts at once); the commands and the latency tests use
    processes, as production does."""
    pool = ParsePool(2, mode="thread")
    await pool.start()
    yield pool
    await pool.close()
