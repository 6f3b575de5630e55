"""``carwatch fhir-gateway`` against the real broker: FHIR in, the same LabResults as HL7 out."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hl7.client import MLLPClient

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.fhir_gateway import FhirGateway
from streams.listeners.mllp import MllpListener, MllpService
from streams.listeners.publisher import LabPublisher

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data"
REPO = Path(__file__).resolve().parents[3]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
TIMEOUT = aiohttp.ClientTimeout(total=30)


async def serve(gateway: FhirGateway) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def gateway_url(topics: Any, fhir_config: FhirConfig) -> AsyncIterator[str]:
    publisher = LabPublisher(
        topics.bootstrap, labs_topic=topics.labs, deadletter_topic=topics.deadletter, timeout_s=10
    )
    async with publisher:
        runner, url = await serve(FhirGateway(publisher, fhir_config))
        try:
            yield url
        finally:
            await runner.cleanup()


async def post(url: str, document: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, data=json.dumps(document), headers=FHIR_JSON) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_a_bundle_yields_the_same_lab_results_as_the_hl7_message(
    topics: Any, consume: Any, gateway_url: str, hl7_config: Hl7Config
) -> None:
    """tests/data/fhir/full_panel.json and tests/data/hl7/full_panel.hl7 are one panel."""
    publisher = LabPublisher(
        topics.bootstrap, labs_topic=topics.labs, deadletter_topic=topics.deadletter
    )
    async with publisher:
        listener = MllpListener(MllpService(publisher, hl7_config), port=0)
        await listener.start()
        try:

            def send() -> bytes:
                with MLLPClient("127.0.0.1", listener.port) as client:
                    client.socket.settimeout(30)
                    return bytes(client.send_message((DATA / "hl7/full_panel.hl7").read_bytes()))

            ack = await asyncio.wait_for(asyncio.to_thread(send), 60)
        finally:
            await listener.close(grace_s=5)
    assert b"MSA|AA|MSG-FULL-0001" in ack

    status, body = await post(
        f"{gateway_url}/fhir", json.loads((DATA / "fhir/full_panel.json").read_text())
    )
    assert status == 200, body
    assert body["issue"][0]["diagnostics"].startswith("18 result(s) stored")

    records = await consume(topics.labs, 36)
    assert len(records) == 36 and {r.key for r in records} == {b"CART-0001"}
    results = [LabResult.model_validate_json(r.value) for r in records]
    from_hl7, from_fhir = results[:18], results[18:]  # one key, one partition: in sent order
    assert [r.model_dump() for r in from_hl7] == [r.model_dump() for r in from_fhir]


async def test_batch_is_answered_after_kafka_with_a_batch_response(
    topics: Any, consume: Any, gateway_url: str
) -> None:
    document = json.loads((DATA / "fhir/full_panel.json").read_text())
    document["type"] = "batch"
    status, body = await post(f"{gateway_url}/fhir", document)
    assert status == 200 and body["type"] == "batch-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 18
    assert len(await consume(topics.labs, 18)) == 18


async def test_rejections_are_422_and_on_the_dead_letter_topic(
    topics: Any, consume: Any, gateway_url: str
) -> None:
    status, body = await post(
        f"{gateway_url}/fhir", json.loads((DATA / "fhir/rejections.json").read_text())
    )
    assert status == 422
    errors = [i for i in body["issue"] if i["severity"] == "error"]
    stored = int(body["issue"][-1]["diagnostics"].split()[0])
    dead = [
        DeadLetter.model_validate_json(r.value)
        for r in await consume(topics.deadletter, len(errors))
    ]
    assert len(dead) == len(errors) > 0
    assert sorted(d.reason.value for d in dead) == sorted(
        i["details"]["coding"][0]["code"] for i in errors
    )
    assert all(
        d.source == "fhir" and d.location and d.location.startswith("/fhir:entry ") for d in dead
    )
    assert len(await consume(topics.labs, stored)) == stored


async def test_not_json_is_400_and_dead_lettered(
    topics: Any, consume: Any, gateway_url: str
) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(
            f"{gateway_url}/fhir/Observation", data=b"{oops", headers=FHIR_JSON
        ) as response,
    ):
        assert response.status == 400
    (record,) = await consume(topics.deadletter, 1)
    assert DeadLetter.model_validate_json(record.value).raw == "{oops"


async def test_broker_unreachable_is_503_never_2xx(
    closed_port: int, fhir_config: FhirConfig
) -> None:
    publisher = LabPublisher(f"kafka://127.0.0.1:{closed_port}", timeout_s=2)
    async with publisher:
        runner, url = await serve(FhirGateway(publisher, fhir_config))
        try:
            answers = [
                await post(f"{url}/fhir", json.loads((DATA / "fhir/full_panel.json").read_text())),
                await post(
                    f"{url}/fhir/Observation",
                    json.loads((DATA / "fhir/observation_igg.json").read_text()),
                ),
            ]
        finally:
            await runner.cleanup()
    for status, body in answers:
        assert status == 503
        assert body["issue"][0]["code"] == "transient"


async def test_the_carwatch_fhir_gateway_command(topics: Any, consume: Any, tmp_path: Path) -> None:
    """The real command in a subprocess: 201 once Kafka has the result; stops on SIGTERM."""
    log = tmp_path / "gateway.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "fhir-gateway",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--broker",
                f"kafka://{topics.bootstrap}",
                "--labs-topic",
                topics.labs,
                "--deadletter-topic",
                topics.deadletter,
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        url = await _listening_url(process, log)
        status, _ = await post(
            f"{url}/Observation", json.loads((DATA / "fhir/observation_igg.json").read_text())
        )
        assert status == 201
        assert len(await consume(topics.labs, 1)) == 1
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(process.wait), 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def _listening_url(process: subprocess.Popen[bytes], log: Path) -> str:
    """The base URL from the command's "listening on http://…/fhir" line (bounded wait)."""
    for _ in range(300):
        for line in log.read_text().splitlines():
            if line.startswith("carwatch fhir-gateway: listening on"):
                return line.split()[4]
        if process.poll() is not None:
            raise AssertionError(f"fhir-gateway exited {process.returncode}: {log.read_text()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"fhir-gateway did not start within 30 s: {log.read_text()}")
