"""``carwatch mllp`` against the real broker, with real MLLP clients (python-hl7).

Each test gets its own labs/dead-letter topics; every wait is bounded.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.client import MLLPClient
from hl7.mllp import open_hl7_connection

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.vocab import RejectReason, ResultStatus
from streams.ingest.hl7.oru import Hl7Config, parse_oru
from streams.listeners.mllp import BROKER_DOWN_TEXT, MllpListener, MllpService
from streams.listeners.publisher import LabPublisher

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data"
REPO = Path(__file__).resolve().parents[3]


def oru(control: str, *obx: str, patient: str = "P0001", accession: str = "ACC-1") -> bytes:
    segments = [
        f"MSH|^~\\&|LIS|LAB|CARWATCH|HOSP|20260105120000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{patient}^^^KIDS^MR",
        f"OBR|1|PL-{accession}|{accession}|58410-2^CBC^LN|||20260105080000+0100",
        *obx,
    ]
    return ("\r".join(segments) + "\r").encode()


def anc(value: str, status: str = "F", unit: str = "10*9/L") -> str:
    return f"OBX|1|NM|751-8^Neutrophils^LN||{value}|{unit}|||||{status}"


def alc(value: str) -> str:
    return f"OBX|2|NM|731-0^Lymphocytes^LN||{value}|/uL|||||F"


def msa(ack: bytes) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK, framed or not."""
    message = hl7.parse(ack.strip(b"\x0b\x1c\r\n").decode())
    segment = message.segment("MSA")
    return str(segment[1]), str(segment[2]), str(segment[3])


def send(port: int, *messages: bytes) -> list[bytes]:
    """python-hl7's blocking MLLP client: one connection, one message after the other."""
    with MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(30)
        return [bytes(client.send_message(m)) for m in messages]


async def send_async(port: int, *messages: bytes) -> list[bytes]:
    return await asyncio.wait_for(asyncio.to_thread(send, port, *messages), 60)


@pytest.fixture
async def listener(topics: Any, hl7_config: Hl7Config) -> AsyncIterator[MllpListener]:
    publisher = LabPublisher(
        topics.bootstrap, labs_topic=topics.labs, deadletter_topic=topics.deadletter, timeout_s=10
    )
    async with publisher:
        server = MllpListener(MllpService(publisher, hl7_config), port=0)
        await server.start()
        yield server
        await server.close(grace_s=5)


async def test_oru_is_acked_aa_and_its_results_are_on_the_labs_topic(
    listener: MllpListener, topics: Any, consume: Any, hl7_config: Hl7Config
) -> None:
    raw = (DATA / "hl7/full_panel.hl7").read_bytes()
    (ack,) = await send_async(listener.port, raw)
    assert msa(ack) == ("AA", "MSG-FULL-0001", "18 results: 18 accepted, 0 not monitored")
    records = await consume(topics.labs, 18)
    expected = [i.outcome for i in parse_oru(raw, hl7_config).items]
    assert len(records) == 18
    assert {r.key for r in records} == {b"CART-0001"}
    assert len({r.partition for r in records}) == 1  # one patient, one partition, in order
    assert [LabResult.model_validate_json(r.value) for r in records] == expected
    assert await consume(topics.deadletter, 0, 1) == []


async def test_rejected_results_are_ae_and_dead_lettered_with_reasons(
    listener: MllpListener, topics: Any, consume: Any
) -> None:
    (ack,) = await send_async(listener.port, (DATA / "hl7/rejections.hl7").read_bytes())
    code, control, text = msa(ack)
    assert (code, control) == ("AE", "MSG-REJ-0001")
    assert text.startswith(
        "16 of 18 results rejected (2 accepted, 0 not monitored): OBX 1 unknown_unit"
    )
    dead = [DeadLetter.model_validate_json(r.value) for r in await consume(topics.deadletter, 16)]
    assert len(dead) == 16
    rejected = [n for n in range(1, 19) if n not in (11, 12)]  # OBX 11 and 12 are fine
    assert {d.location for d in dead} == {f"message MSG-REJ-0001:OBX {n}" for n in rejected}
    assert {d.reason for d in dead} >= {RejectReason.UNKNOWN_UNIT, RejectReason.INVALID_FIELD}
    assert all(d.source == "mllp" and d.raw.startswith("OBX|") and d.details for d in dead)
    assert len(await consume(topics.labs, 2)) == 2  # the good results are stored


async def test_unusable_messages_are_ar_and_dead_lettered(
    listener: MllpListener, topics: Any, consume: Any
) -> None:
    adt = oru("ADT-1", anc("0.4")).replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01")
    no_pid = oru("NOPID-1", anc("0.4")).replace(b"P0001^^^KIDS^MR", b"")
    acks = await send_async(listener.port, b"this is not HL7", adt, no_pid)
    assert [msa(a)[:2] for a in acks] == [("AR", ""), ("AR", "ADT-1"), ("AE", "NOPID-1")]
    assert "ERR|||102^" in acks[0].decode() and "ERR|||200^" in acks[1].decode()
    records = await consume(topics.deadletter, 3)
    dead = {DeadLetter.model_validate_json(r.value).reason: r for r in records}
    assert set(dead) == {
        RejectReason.MALFORMED_HL7,
        RejectReason.UNSUPPORTED_MESSAGE,
        RejectReason.MISSING_PATIENT_ID,
    }
    assert all(r.key is None for r in records)  # no patient id to key them by
    assert DeadLetter.model_validate_json(dead[RejectReason.MALFORMED_HL7].value).raw == (
        "this is not HL7"
    )


async def test_ten_thousand_messages_on_one_connection_exactly_once(
    listener: MllpListener, topics: Any, consume: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    total = 10_000
    reader, writer = await open_hl7_connection("127.0.0.1", listener.port, encoding="utf-8")
    codes: dict[str, int] = {}
    started = time.monotonic()
    try:
        for n in range(total):
            message = oru(
                f"C{n:06d}",
                anc(str(100 + n % 5000), unit="/uL"),
                alc(str(50 + n % 3000)),
                patient=f"P{n % 997:04d}",
                accession=f"ACC-{n:06d}",
            )
            writer.writeblock(message)
            await writer.drain()
            ack = await asyncio.wait_for(reader.readblock(), 30)
            code, control, _ = msa(ack)
            assert control == f"C{n:06d}"
            codes[code] = codes.get(code, 0) + 1
        elapsed = time.monotonic() - started
    finally:
        writer.close()
        await writer.wait_closed()
    assert codes == {"AA": total}
    with capsys.disabled():
        print(f"\n10,000 MLLP messages in {elapsed:.1f} s: {total / elapsed:,.0f} messages/s")
    records = await consume(topics.labs, 2 * total, 60)
    seen = [(json.loads(r.value)["accession"], json.loads(r.value)["analyte"]) for r in records]
    assert len(seen) == 2 * total and len(set(seen)) == 2 * total  # all there, none twice
    assert all(r.key == json.loads(r.value)["patient_id"].encode() for r in records)


async def test_broker_unreachable_is_never_aa(closed_port: int, hl7_config: Hl7Config) -> None:
    publisher = LabPublisher(f"kafka://127.0.0.1:{closed_port}", timeout_s=2)
    async with publisher:
        server = MllpListener(MllpService(publisher, hl7_config), port=0)
        await server.start()
        try:
            messages = [
                (DATA / "hl7/full_panel.hl7").read_bytes(),
                (DATA / "hl7/rejections.hl7").read_bytes(),
                b"not HL7 at all",
            ]
            acks = await send_async(server.port, *messages)
        finally:
            await server.close(grace_s=3)
    assert [msa(a) for a in acks] == [
        ("AR", "MSG-FULL-0001", BROKER_DOWN_TEXT),
        ("AR", "MSG-REJ-0001", BROKER_DOWN_TEXT),
        ("AR", "", BROKER_DOWN_TEXT),
    ]
    assert all("ERR|||207^" in a.decode() for a in acks)


async def test_broker_unreachable_close_mode_hangs_up(
    closed_port: int, hl7_config: Hl7Config
) -> None:
    publisher = LabPublisher(f"kafka://127.0.0.1:{closed_port}", timeout_s=2)
    async with publisher:
        service = MllpService(publisher, hl7_config, broker_down="close")
        server = MllpListener(service, port=0)
        await server.start()
        try:
            (reply,) = await send_async(server.port, (DATA / "hl7/full_panel.hl7").read_bytes())
        finally:
            await server.close(grace_s=3)
    assert reply == b""  # connection closed, no ACK: the engine resends


async def test_correction_arrives_as_corrected_after_the_original(
    listener: MllpListener, topics: Any, consume: Any
) -> None:
    original = oru("C-ORIG", anc("0.3"), accession="LAB-777")
    corrected = oru("C-CORR", anc("1.8", status="C"), accession="LAB-777")
    acks = await send_async(listener.port, original, corrected)
    assert [msa(a)[0] for a in acks] == ["AA", "AA"]
    results = [LabResult.model_validate_json(r.value) for r in await consume(topics.labs, 2)]
    assert [(r.status, r.value, r.accession) for r in results] == [
        (ResultStatus.FINAL, 300, "LAB-777"),
        (ResultStatus.CORRECTED, 1800, "LAB-777"),
    ]


def igg(control: str, g_per_l: str, status: str) -> bytes:
    """An IgG result of patient E2E-1, collected on day 30 after the infusion below."""
    return (
        "\r".join(
            [
                f"MSH|^~\\&|LIS|LAB|CARWATCH|HOSP|20260131140000+0000||ORU^R01^ORU_R01|{control}|P|2.5.1",
                "PID|1||E2E-1^^^KIDS^MR",
                "OBR|1|PL-IGG1|LAB-IGG1|2465-3^IgG^LN|||20260131080000+0000"
                "|||||||||||||||20260131140000+0000",
                f"OBX|1|NM|2465-3^IgG^LN||{g_per_l}|g/L|||||{status}|||20260131080000+0000",
            ]
        ).encode()
        + b"\r"
    )


async def test_a_correction_over_mllp_retracts_the_alert_in_the_worker(
    listener: MllpListener, pipeline: Any, consume: Any
) -> None:
    """End to end: MLLP → carwatch.labs → ``carwatch worker`` → carwatch.alerts. IgG 3.5 g/L
    (350 mg/dL) on day 30 raises hypogammaglobulinemia; the lab's correction to 5.3 g/L (OBX-11
    C, same accession) retracts it (clinical-rules.md section 0, DESIGN.md "Corrections")."""
    worker = await asyncio.to_thread(pipeline.start_worker)
    infusion = {
        "type": "infusion",
        "patient_id": "E2E-1",
        "infused_at": "2026-01-01T10:00:00Z",
        "product": "tisagenlecleucel",
        "costimulatory_domain": "4-1BB",
        "prior_hct": False,
        "hct_eligible": True,
        "risk_factors": [],
    }
    await asyncio.to_thread(pipeline.feed_in_order, [json.dumps(infusion).encode()], worker)
    await asyncio.to_thread(pipeline.wait_consumed, worker, 1)

    (ack,) = await send_async(listener.port, igg("IGG-F", "3.5", "F"))
    assert msa(ack)[0] == "AA"
    raised = [json.loads(r.value) for r in await consume(pipeline.alerts, 1, 90)]
    assert [(a["rule"], a["action"]) for a in raised] == [("hypogammaglobulinemia", "raised")]

    (ack,) = await send_async(listener.port, igg("IGG-C", "5.3", "C"))
    assert msa(ack)[0] == "AA"
    events = [json.loads(r.value) for r in await consume(pipeline.alerts, 2, 90)]
    assert [(a["rule"], a["action"]) for a in events] == [
        ("hypogammaglobulinemia", "raised"),
        ("hypogammaglobulinemia", "retracted"),
    ]
    assert events[1]["alert_id"] == events[0]["alert_id"]
    assert all(a["patient_id"] == "E2E-1" for a in events)


async def test_the_carwatch_mllp_command(topics: Any, consume: Any, tmp_path: Path) -> None:
    """The real command in a subprocess: starts, answers AA once Kafka has the results, stops
    cleanly on SIGTERM."""
    feed = tmp_path / "feed.toml"
    feed.write_text('assigning_authority = "KIDS"\n')
    log = tmp_path / "mllp.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "mllp",
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
                "--feed-config",
                str(feed),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = await _listening_port(process, log)
        (ack,) = await send_async(port, oru("CLI-1", anc("0.42"), alc("300")))
        assert msa(ack)[:2] == ("AA", "CLI-1")
        assert len(await consume(topics.labs, 2)) == 2
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(process.wait), 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def _listening_port(process: subprocess.Popen[bytes], log: Path) -> int:
    """The port from the command's "listening on 127.0.0.1:PORT" line (bounded wait)."""
    for _ in range(300):
        for line in log.read_text().splitlines():
            if line.startswith("carwatch mllp: listening on"):
                return int(line.split()[4].split(":")[1])
        if process.poll() is not None:
            raise AssertionError(f"carwatch mllp exited {process.returncode}: {log.read_text()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"carwatch mllp did not start within 30 s: {log.read_text()}")
