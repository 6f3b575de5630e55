"""MLLP acknowledgment decisions and the listener with a fake publisher (no broker)."""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient
from prometheus_client import CollectorRegistry

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.vocab import RejectReason
from streams.ingest.hl7.oru import Hl7Config, parse_oru
from streams.listeners.mllp import (
    BROKER_DOWN_TEXT,
    AckDecision,
    MllpListener,
    MllpService,
    broker_unavailable_ack,
    decide_ack,
    frame,
    frame_too_large_ack,
)
from streams.listeners.publisher import BrokerUnavailable
from streams.metrics import ListenerMetrics

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
MSH = "MSH|^~\\&|LIS|LAB|CARWATCH|HOSP|20260105120000+0100||ORU^R01^ORU_R01|CTRL-1|P|2.5.1"
PID = "PID|1||P001^^^KIDS^MR"
OBR = "OBR|1|PL-1|FI-1|58410-2^CBC^LN|||20260105080000+0100"
ANC = "OBX|1|NM|751-8^Neutrophils^LN||0.42|10*9/L|||||F"
ANC_BAD_UNIT = "OBX|2|NM|751-8^Neutrophils^LN||0.42|g/L|||||F"
GLUCOSE = "OBX|3|NM|2345-7^Glucose^LN||5.1|mmol/L|||||F"


def msg(*segments: str, msh: str = MSH) -> bytes:
    return "\r".join([msh, *segments]).encode() + b"\r"


class FakePublisher:
    """Records what would be published; ``fail`` makes it behave like an unreachable broker."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.results: list[LabResult] = []
        self.dead_letters: list[tuple[DeadLetter, str | None]] = []
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def publish(
        self, results: Sequence[LabResult], dead_letters: Sequence[tuple[DeadLetter, str | None]]
    ) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BrokerUnavailable("Kafka at 127.0.0.1:1 is unavailable")
        self.results += results
        self.dead_letters += dead_letters


def service(publisher: FakePublisher, **kwargs: object) -> MllpService:
    return MllpService(
        publisher,
        Hl7Config(assigning_authority="KIDS"),
        clock=lambda: NOW,
        **kwargs,  # type: ignore[arg-type]
    )


def ack_of(reply: bytes | None) -> hl7.Message:
    assert reply is not None
    return hl7.parse(reply.decode())


# --- decisions ----------------------------------------------------------------------------------


def test_all_accepted_or_unmapped_is_aa() -> None:
    decision = decide_ack(parse_oru(msg(PID, OBR, ANC, GLUCOSE), Hl7Config()))
    assert decision == AckDecision("AA", "2 results: 1 accepted, 1 not monitored")


def test_a_rejected_result_is_ae_with_reason_codes() -> None:
    decision = decide_ack(parse_oru(msg(PID, OBR, ANC, ANC_BAD_UNIT, GLUCOSE), Hl7Config()))
    assert decision.code == "AE"
    assert decision.error_code == "103"
    assert decision.text == (
        "1 of 3 results rejected (1 accepted, 1 not monitored): OBX 2 unknown_unit OBX-6"
    )
    assert not decision.retry


def test_ae_text_is_bounded() -> None:
    many = [ANC_BAD_UNIT.replace("OBX|2", f"OBX|{n}") for n in range(60)]
    decision = decide_ack(parse_oru(msg(PID, OBR, *many), Hl7Config()))
    assert decision.code == "AE" and len(decision.text) <= 200 and decision.text.endswith("…")


def test_missing_patient_id_is_ae() -> None:
    decision = decide_ack(parse_oru(msg("PID|1||", OBR, ANC), Hl7Config()))
    assert (decision.code, decision.error_code) == ("AE", "101")
    assert "missing_patient_id PID-3" in decision.text


def test_not_hl7_is_ar() -> None:
    decision = decide_ack(parse_oru(b"hello world", Hl7Config()))
    assert (decision.code, decision.error_code, decision.retry) == ("AR", "102", False)
    assert decision.text.startswith("message rejected: malformed_hl7")


def test_not_oru_is_ar_unsupported() -> None:
    adt = MSH.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")
    decision = decide_ack(parse_oru(msg(PID, msh=adt), Hl7Config()))
    assert (decision.code, decision.error_code) == ("AR", "200")
    assert "unsupported_message MSH-9" in decision.text


def test_broker_unavailable_is_ar_retry() -> None:
    assert broker_unavailable_ack() == AckDecision("AR", BROKER_DOWN_TEXT, "207", retry=True)


def test_frame_too_large_is_ar() -> None:
    decision = frame_too_large_ack(5_000_000, 1_048_576)
    assert decision.code == "AR" and "5000000 bytes exceed the limit of 1048576" in decision.text


def test_fixture_messages(data_dir: Path, hl7_config: Hl7Config) -> None:
    full = decide_ack(parse_oru((data_dir / "hl7/full_panel.hl7").read_bytes(), hl7_config))
    rejections = decide_ack(parse_oru((data_dir / "hl7/rejections.hl7").read_bytes(), hl7_config))
    assert full.code == "AA" and full.text == "18 results: 18 accepted, 0 not monitored"
    assert rejections.code == "AE" and rejections.error_code == "103"


# --- the service: publish first, then ACK ---------------------------------------------------------


async def test_aa_after_publishing_results() -> None:
    publisher = FakePublisher()
    reply = await service(publisher).handle_message(msg(PID, OBR, ANC, GLUCOSE))
    ack = ack_of(reply.ack)
    assert str(ack.segment("MSA")) == "MSA|AA|CTRL-1|2 results: 1 accepted, 1 not monitored"
    assert str(ack.segment("MSH")[9]) == "ACK^R01^ACK"
    assert [r.patient_id for r in publisher.results] == ["P001"]
    assert publisher.results[0].value == 420 and publisher.dead_letters == []


async def test_ae_publishes_good_results_and_dead_letters_the_rest() -> None:
    publisher = FakePublisher()
    metrics = ListenerMetrics(CollectorRegistry())
    reply = await service(publisher, metrics=metrics).handle_message(
        msg(PID, OBR, ANC, ANC_BAD_UNIT, GLUCOSE)
    )
    ack = ack_of(reply.ack)
    assert str(ack.segment("MSA")[1]) == "AE"
    assert str(ack.segment("ERR")[3]) == "103^Table value not found^HL70357"
    assert len(publisher.results) == 1
    (dead, key), *_ = publisher.dead_letters
    assert len(publisher.dead_letters) == 1 and key == "P001"
    assert dead.reason is RejectReason.UNKNOWN_UNIT and dead.source == "mllp"
    assert dead.location == "message CTRL-1:OBX 2" and dead.raw.startswith("OBX|2|")
    assert dead.received_at == NOW
    sample = metrics.registry.get_sample_value
    assert sample("carwatch_results_total", {"analyte": "anc", "outcome": "accepted"}) == 1
    assert sample("carwatch_results_total", {"analyte": "unknown", "outcome": "unmapped"}) == 1
    assert sample("carwatch_results_total", {"analyte": "unknown", "outcome": "rejected"}) == 1
    assert sample("carwatch_rejected_total", {"reason": "unknown_unit"}) == 1
    assert sample("carwatch_deadletter_messages_total", {"topic": "mllp"}) == 1


async def test_whole_message_rejection_is_dead_lettered_without_key() -> None:
    publisher = FakePublisher()
    reply = await service(publisher).handle_message(b"not hl7 at all")
    assert str(ack_of(reply.ack).segment("MSA")[1]) == "AR"
    ((dead, key),) = publisher.dead_letters
    assert key is None and dead.reason is RejectReason.MALFORMED_HL7
    assert dead.raw == "not hl7 at all" and dead.location == "message (no MSH-10)"


async def test_broker_unavailable_never_aa_and_nothing_counted() -> None:
    publisher = FakePublisher(fail=True)
    metrics = ListenerMetrics(CollectorRegistry())
    reply = await service(publisher, metrics=metrics).handle_message(msg(PID, OBR, ANC))
    ack = ack_of(reply.ack)
    assert str(ack.segment("MSA")) == f"MSA|AR|CTRL-1|{BROKER_DOWN_TEXT}"
    assert str(ack.segment("ERR")[3]).startswith("207^")
    assert not reply.close
    assert metrics.registry.get_sample_value(
        "carwatch_results_total", {"analyte": "anc", "outcome": "accepted"}
    ) in (None, 0)


async def test_broker_unavailable_even_for_a_rejection_is_retry() -> None:
    """The dead letter could not be written either: AR retry, not AE/AR final."""
    reply = await service(FakePublisher(fail=True)).handle_message(b"garbage")
    assert str(ack_of(reply.ack).segment("MSA")[3]) == BROKER_DOWN_TEXT


async def test_broker_down_close_mode_hangs_up_without_ack() -> None:
    reply = await service(FakePublisher(fail=True), broker_down="close").handle_message(
        msg(PID, OBR, ANC)
    )
    assert reply.ack is None and reply.close


async def test_latin1_message_gets_latin1_ack() -> None:
    msh = MSH.replace("|LIS|", "|LÏS|") + "|||AL|NE||8859/1"
    reply = await service(FakePublisher()).handle_message(
        msg(PID, OBR, ANC, msh=msh).decode().encode("latin-1")
    )
    assert reply.ack is not None and "LÏS".encode("latin-1") in reply.ack


# --- the listener on loopback with a real MLLP client ---------------------------------------------


@pytest.fixture
async def listener() -> "asyncio.AsyncGenerator[tuple[MllpListener, FakePublisher], None]":
    publisher = FakePublisher()
    server = MllpListener(service(publisher, max_frame_bytes=4096), port=0)
    await server.start()
    yield server, publisher
    await server.close(grace_s=1)


async def test_real_client_gets_aa(listener: tuple[MllpListener, FakePublisher]) -> None:
    server, publisher = listener

    def send() -> bytes:
        with MLLPClient("127.0.0.1", server.port) as client:
            return bytes(client.send_message(msg(PID, OBR, ANC)))

    reply = await asyncio.wait_for(asyncio.to_thread(send), 10)
    assert reply.startswith(b"\x0bMSH|") and reply.endswith(b"\x1c\r")
    assert str(hl7.parse(reply[1:-2].decode()).segment("MSA")[1]) == "AA"
    assert len(publisher.results) == 1


async def test_ack_waits_for_the_broker(listener: tuple[MllpListener, FakePublisher]) -> None:
    server, publisher = listener
    publisher.gate = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(msg(PID, OBR, ANC)))
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 0.3)
    publisher.gate.set()
    ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
    assert b"MSA|AA|CTRL-1" in ack
    writer.close()
    await writer.wait_closed()


async def test_pipelined_frames_answered_in_order_with_junk_and_oversize(
    listener: tuple[MllpListener, FakePublisher],
) -> None:
    server, publisher = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    ids = [f"C{n}" for n in range(5)]
    data = b"junk"
    for control in ids[:2]:
        data += frame(msg(PID, OBR, ANC, msh=MSH.replace("CTRL-1", control))) + b"\n"
    data += frame(msg(PID, OBR, ANC, "NTE|1||" + "x" * 5000, msh=MSH.replace("CTRL-1", "BIG")))
    for control in ids[2:]:
        data += frame(msg(PID, OBR, ANC, msh=MSH.replace("CTRL-1", control)))
    writer.write(data)
    await writer.drain()
    acks = [await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5) for _ in range(6)]
    seen = [hl7.parse(a.strip(b"\x0b\x1c\r\n").decode()).segment("MSA") for a in acks]
    assert [(str(s[1]), str(s[2])) for s in seen] == [
        ("AA", "C0"),
        ("AA", "C1"),
        ("AR", "BIG"),
        ("AA", "C2"),
        ("AA", "C3"),
        ("AA", "C4"),
    ]
    assert "exceed the limit of 4096 bytes" in str(seen[2][3])
    assert len(publisher.results) == 5
    ((big, key),) = publisher.dead_letters
    assert big.reason is RejectReason.MALFORMED_HL7 and key is None
    writer.close()
    await writer.wait_closed()


class BrokenPublisher(FakePublisher):
    async def publish(
        self, results: Sequence[LabResult], dead_letters: Sequence[tuple[DeadLetter, str | None]]
    ) -> None:
        raise RuntimeError("a bug")


async def test_a_bug_hangs_up_without_ack(caplog: pytest.LogCaptureFixture) -> None:
    server = MllpListener(service(BrokenPublisher()), port=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(msg(PID, OBR, ANC)))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no ACK: sender resends
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close(grace_s=1)
    assert "internal error; closing without ACK" in caplog.text
