"""Transport security end to end (issue 11, Deliver 6): an HL7 message over MLLP/TLS (mutual TLS)
and a FHIR Bundle over HTTPS with a bearer token reach ``carwatch.labs`` on the project's own
broker through its TLS + SASL/SCRAM listener, and the worker consumes over SASL_SSL.

The broker is a second one started by scripts/broker.sh with the opt-in secure listener; the
test makes its certificate authority with the ``cryptography`` package.
"""

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from schemas.lab_result import LabResult
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.connections import ListenerLimits, TlsFiles
from streams.listeners.fhir_gateway import FhirGateway, _serve
from streams.listeners.mllp import MllpListener, MllpService, frame
from streams.listeners.pool import ParsePool
from streams.listeners.publisher import LabPublisher
from streams.metrics import ListenerMetrics
from streams.pipeline.topics import ensure_topics
from streams.settings import Settings
from tests.integration.conftest import (
    PARTITIONS,
    Broker,
    Pipeline,
    free_port,
    require_java,
    running_broker,
)
from tests.integration.feeds.certs import Pki, make_pki

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data"
USER, PASSWORD = "carwatch", "scram-secret-for-tests"
TOKEN = "token-for-tests"


@dataclass(frozen=True)
class SecureBroker:
    plaintext: Broker
    sasl_port: int
    pki: Pki

    def settings(self, **topics: str) -> Settings:
        return Settings(
            broker_url=f"kafka://127.0.0.1:{self.sasl_port}",
            ssl_cafile=self.pki.ca,
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username=USER,
            sasl_password=PASSWORD,  # type: ignore[arg-type]
            **topics,
        )

    def env(self) -> dict[str, str]:
        return {
            "CARWATCH_BROKER_URL": f"kafka://127.0.0.1:{self.sasl_port}",
            "CARWATCH_SSL_CAFILE": str(self.pki.ca),
            "CARWATCH_SASL_MECHANISM": "SCRAM-SHA-256",
            "CARWATCH_SASL_USERNAME": USER,
            "CARWATCH_SASL_PASSWORD": PASSWORD,
        }


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    require_java()
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    sasl = free_port()
    with running_broker(
        free_port(),
        free_port(),
        tmp_path_factory.mktemp("secure-kafka"),
        CARWATCH_KAFKA_SASL_SSL_PORT=str(sasl),
        CARWATCH_KAFKA_SSL_KEYSTORE_PEM=str(pki.server_pem),
        CARWATCH_KAFKA_SCRAM_USER=USER,
        CARWATCH_KAFKA_SCRAM_PASSWORD=PASSWORD,
    ) as plaintext:
        yield SecureBroker(plaintext, sasl, pki)


@pytest.fixture
def secure_pipeline(secure_broker: SecureBroker, tmp_path: Path) -> Iterator[Pipeline]:
    pipeline = Pipeline(secure_broker.plaintext, tmp_path)
    ensure_topics(
        secure_broker.settings(inbound_topic=pipeline.inbound),
        (pipeline.labs, pipeline.clinical, pipeline.alerts, pipeline.deadletter, pipeline.inbound),
        partitions=PARTITIONS,
    )
    try:
        yield pipeline
    finally:
        pipeline.close()


def client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def oru(control: str, patient: str, obx: str) -> bytes:
    return (
        "\r".join(
            [
                f"MSH|^~\\&|LIS|LAB|CW|H|20260131140000+0000||ORU^R01^ORU_R01|{control}|P|2.5.1",
                f"PID|1||{patient}^^^KIDS^MR",
                "OBR|1|PL-1|LAB-SEC-1|2465-3^IgG^LN|||20260131080000+0000",
                obx,
            ]
        ).encode()
        + b"\r"
    )


async def send_tls(port: int, context: ssl.SSLContext, message: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context), 10
    )
    try:
        writer.write(frame(message))
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
    finally:
        writer.close()


async def consume_secure(settings: Settings, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings.aiokafka_config(),
    )
    await consumer.start()
    found: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while len(found) < count and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                found.extend(batch)
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def listeners(
    secure_broker: SecureBroker, secure_pipeline: Pipeline
) -> AsyncIterator[tuple[MllpListener, str, ListenerMetrics, ListenerMetrics]]:
    """MLLP over mutual TLS and the FHIR gateway over HTTPS with a token, both publishing over
    SASL_SSL."""
    pki = secure_broker.pki
    settings = secure_broker.settings(
        labs_topic=secure_pipeline.labs,
        deadletter_topic=secure_pipeline.deadletter,
        inbound_topic=secure_pipeline.inbound,
    )
    limits = ListenerLimits(idle_timeout_s=60)
    mllp_tls = TlsFiles(pki.server_cert, pki.server_key, client_ca=pki.ca)
    https = TlsFiles(pki.server_cert, pki.server_key)
    mllp_metrics = ListenerMetrics(CollectorRegistry())
    fhir_metrics = ListenerMetrics(CollectorRegistry())
    pool = ParsePool(2, mode="thread")
    async with LabPublisher(settings=settings, timeout_s=20) as publisher:
        service = MllpService(publisher, pool, Hl7Config(assigning_authority="KIDS"))
        service.metrics = mllp_metrics
        mllp = MllpListener(service, port=0, guard=limits.guard("mllp", mllp_metrics, mllp_tls))
        await mllp.start()
        gateway = FhirGateway(publisher, pool, FhirConfig(), metrics=fhir_metrics, token=TOKEN)
        fhir_port = free_port()
        stop = asyncio.Event()
        guard = limits.guard("fhir", fhir_metrics, https)
        serving = asyncio.ensure_future(
            _serve(gateway, "127.0.0.1", fhir_port, guard, publisher, None, stop)
        )
        await asyncio.sleep(0.5)
        try:
            yield mllp, f"https://127.0.0.1:{fhir_port}", mllp_metrics, fhir_metrics
        finally:
            stop.set()
            await serving
            await mllp.close(grace_s=2)
            await pool.close()


async def test_mllp_tls_and_https_with_a_token_reach_the_labs_topic_over_sasl_ssl(
    secure_broker: SecureBroker,
    secure_pipeline: Pipeline,
    listeners: tuple[MllpListener, str, ListenerMetrics, ListenerMetrics],
) -> None:
    mllp, base, mllp_metrics, fhir_metrics = listeners
    pki = secure_broker.pki
    trusted = client_context(pki, pki.client_cert, pki.client_key)
    ack = await send_tls(
        mllp.port, trusted, oru("SEC-1", "SEC-P1", "OBX|1|NM|2465-3^IgG^LN||3.5|g/L|||||F")
    )
    assert b"MSA|AA|SEC-1" in ack

    # Without a client certificate, or with one of another CA: no session, counted.
    for cert, key in ((None, None), (pki.other_client_cert, pki.other_client_key)):
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await send_tls(mllp.port, client_context(pki, cert, key), oru("SEC-X", "X", ""))
    sample = mllp_metrics.registry.get_sample_value
    assert (
        sample("carwatch_listener_connections_total", {"listener": "mllp", "outcome": "tls_error"})
        == 2
    )

    document = json.loads((DATA / "fhir/observation_igg.json").read_text())
    https = client_context(pki, None, None)
    async with aiohttp.ClientSession() as session:
        url = f"{base}/fhir/Observation"
        headers = {"Content-Type": "application/fhir+json"}
        async with session.post(url, json=document, headers=headers, ssl=https) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = {**headers, "Authorization": "Bearer nope"}
        async with session.post(url, json=document, headers=wrong, ssl=https) as response:
            assert response.status == 403
        right = {**headers, "Authorization": f"Bearer {TOKEN}"}
        async with session.post(url, json=document, headers=right, ssl=https) as response:
            assert response.status == 201, await response.text()
    fhir_sample = fhir_metrics.registry.get_sample_value
    assert fhir_sample("carwatch_listener_messages_total", {"listener": "fhir", "code": "401"}) == 1
    assert fhir_sample("carwatch_listener_messages_total", {"listener": "fhir", "code": "201"}) == 1

    settings = secure_broker.settings()
    records = await consume_secure(settings, secure_pipeline.labs, 2)
    results = [LabResult.model_validate_json(r.value) for r in records]
    assert sorted(r.patient_id for r in results) == ["CART-0001", "SEC-P1"]
    stored = await consume_secure(settings, secure_pipeline.inbound, 2)
    assert len(stored) == 2


async def test_the_worker_consumes_over_sasl_ssl(
    secure_broker: SecureBroker,
    secure_pipeline: Pipeline,
    listeners: tuple[MllpListener, str, ListenerMetrics, ListenerMetrics],
) -> None:
    """Infusion and an IgG of 3.5 g/L on day 30 over MLLP/TLS: the worker, connected through
    SASL_SSL only, raises hypogammaglobulinemia on the alerts topic."""
    mllp = listeners[0]
    worker = await asyncio.to_thread(secure_pipeline.start_worker, **secure_broker.env())
    settings = secure_broker.settings()
    infusion = {
        "type": "infusion",
        "patient_id": "SEC-P2",
        "infused_at": "2026-01-01T10:00:00Z",
    }
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.aiokafka_config())
    await producer.start()
    try:
        await producer.send_and_wait(
            secure_pipeline.clinical, json.dumps(infusion).encode(), key=b"SEC-P2"
        )
    finally:
        await producer.stop()
    await asyncio.to_thread(secure_pipeline.wait_consumed, worker, 1, 90)
    pki = secure_broker.pki
    trusted = client_context(pki, pki.client_cert, pki.client_key)
    ack = await send_tls(
        mllp.port, trusted, oru("SEC-2", "SEC-P2", "OBX|1|NM|2465-3^IgG^LN||3.5|g/L|||||F")
    )
    assert b"MSA|AA|SEC-2" in ack
    alerts = [
        json.loads(r.value) for r in await consume_secure(settings, secure_pipeline.alerts, 1)
    ]
    assert [(a["rule"], a["action"], a["patient_id"]) for a in alerts] == [
        ("hypogammaglobulinemia", "raised", "SEC-P2")
    ]
