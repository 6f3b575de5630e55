"""LabPublisher (streams/listeners/publisher.py) without a broker: a fake producer, a closed port."""

import asyncio
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from schemas.deadletter import DeadLetter, RejectDetail
from schemas.lab_result import LabResult
from schemas.vocab import Analyte, RejectReason
from streams.ingest.config import load_feed_config
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.plans import MAX_DEAD_LETTER_RAW, Plan, fit
from streams.listeners.publisher import (
    MESSAGE_ID_HEADER,
    BrokerUnavailable,
    LabPublisher,
)

AT = datetime(2026, 1, 5, 8, tzinfo=UTC)
RESULT = LabResult(patient_id="P001", analyte=Analyte.ANC, value=420, unit="/uL", collected_at=AT)


def dead_letter(raw: str = "OBX|1|") -> DeadLetter:
    detail = RejectDetail(reason=RejectReason.UNKNOWN_UNIT, field="OBX-6", message="g/L")
    return DeadLetter(reason=RejectReason.UNKNOWN_UNIT, details=(detail,), raw=raw, source="mllp")


def plan(
    results: list[LabResult], dead_letters: Sequence[tuple[DeadLetter, str | None]] = ()
) -> Plan:
    return Plan(
        results=[(r.patient_id.encode(), r.model_dump_json().encode()) for r in results],
        dead_letters=[
            (key.encode() if key else None, dl.model_dump_json().encode())
            for dl, key in dead_letters
        ],
    )


class FakeProducer:
    """Stands in for AIOKafkaProducer: ``mode`` ack (resolve), hang (never) or fail."""

    instances: ClassVar[list["FakeProducer"]] = []

    def __init__(self, mode: str = "ack", **options: Any) -> None:
        self.options = options
        self.mode = mode
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.headers: list[Any] = []
        self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> "FakeBatch":
        return FakeBatch()

    async def send_batch(self, batch: "FakeBatch", topic: str, *, partition: int) -> Any:
        futures = [await self.send(topic, value, key) for key, value in batch.records]
        return futures[-1]

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> "asyncio.Future[Any]":
        self.sent.append((topic, value, key))
        self.headers.append(headers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.mode == "ack":
            future.set_result(SimpleNamespace(topic=topic, partition=0, offset=len(self.sent) - 1))
        elif self.mode == "fail":
            future.set_exception(ConnectionError("lost"))
        return future


class FakeBatch:
    """Stands in for aiokafka's BatchBuilder: two records fill it."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: None) -> object | None:
        if len(self.records) == 2:
            return None
        self.records.append((key, value))
        return object()


def factory(mode: str) -> Any:
    FakeProducer.instances = []
    return lambda **options: FakeProducer(mode, **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_broker_and_topics_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARWATCH_BROKER_URL", "kafka://10.0.0.9:19092")
    monkeypatch.setenv("CARWATCH_LABS_TOPIC", "site.labs")
    publisher = LabPublisher(producer_factory=factory("ack"))
    assert publisher.bootstrap == "10.0.0.9:19092"
    assert (publisher.labs_topic, publisher.deadletter_topic) == (
        "site.labs",
        "carwatch.deadletter",
    )
    monkeypatch.delenv("CARWATCH_BROKER_URL")
    monkeypatch.delenv("CARWATCH_LABS_TOPIC")
    publisher = LabPublisher(producer_factory=factory("ack"))
    assert (publisher.bootstrap, publisher.labs_topic) == ("127.0.0.1:9092", "carwatch.labs")
    explicit = LabPublisher("kafka://a:1;kafka://b", producer_factory=factory("ack"))
    assert explicit.bootstrap == "a:1,b:9092"


async def test_records_keyed_by_patient_and_acked() -> None:
    async with LabPublisher("kafka://x:1", producer_factory=factory("ack")) as publisher:
        await publisher.publish(plan([RESULT], [(dead_letter(), "P001"), (dead_letter(), None)]))
    (producer,) = FakeProducer.instances
    assert producer.options["acks"] == "all" and producer.options["enable_idempotence"] is True
    assert producer.options["request_timeout_ms"] == 10_000
    assert producer.options["bootstrap_servers"] == "x:1"
    assert producer.options["security_protocol"] == "PLAINTEXT"
    assert producer.options["max_request_size"] >= 8 * 1024 * 1024  # the message store
    assert [(t, k) for t, _, k in producer.sent] == [
        ("carwatch.labs", b"P001"),
        ("carwatch.deadletter", b"P001"),
        ("carwatch.deadletter", None),
    ]
    assert LabResult.model_validate_json(producer.sent[0][1]) == RESULT
    assert producer.stopped


async def test_results_dead_letters_and_the_message_store_use_their_topics() -> None:
    publisher = LabPublisher(
        "kafka://x:1",
        labs_topic="t.labs",
        deadletter_topic="t.dl",
        inbound_topic="t.in",
        producer_factory=factory("ack"),
    )
    await publisher.publish(plan([RESULT]))
    await publisher.publish(plan([], [(dead_letter(), "P001")]))
    reference = await publisher.store_inbound(b"MSH|...", "kids-lab", "x-hl7", AT, "m-1")
    await publisher.stop()
    producer = FakeProducer.instances[0]
    assert [t for t, _, _ in producer.sent] == ["t.labs", "t.dl", "t.in"]
    assert reference == "t.in:0:2"
    assert producer.sent[2] == ("t.in", b"MSH|...", b"kids-lab")
    assert dict(producer.headers[2]) == {
        MESSAGE_ID_HEADER: b"m-1",
        "carwatch-feed": b"kids-lab",
        "content-type": b"x-hl7",
        "carwatch-received-at": b"2026-01-05T08:00:00Z",
    }


async def test_unacknowledged_records_raise_within_the_timeout_and_reconnect() -> None:
    publisher = LabPublisher("kafka://x:1", timeout_s=0.2, producer_factory=factory("hang"))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="did not acknowledge 1 of 1"):
        await publisher.publish(plan([RESULT]))
    assert time.monotonic() - started < 2
    assert not publisher.connected
    with pytest.raises(BrokerUnavailable):
        await publisher.publish(plan([RESULT]))
    assert len(FakeProducer.instances) == 2  # a fresh producer after the failure
    await publisher.stop()
    assert all(producer.stopped for producer in FakeProducer.instances)


async def test_a_failed_record_fails_the_whole_call() -> None:
    publisher = LabPublisher("kafka://x:1", producer_factory=factory("fail"))
    with pytest.raises(BrokerUnavailable, match="ConnectionError: lost"):
        await publisher.publish(plan([RESULT], [(dead_letter(), None)]))
    await publisher.stop()


async def test_nothing_to_publish_needs_no_broker() -> None:
    publisher = LabPublisher("kafka://x:1", producer_factory=factory("fail"))
    await publisher.publish(Plan())
    assert FakeProducer.instances == []


def test_oversized_dead_letter_raw_is_cut() -> None:
    value = fit(dead_letter("x" * (MAX_DEAD_LETTER_RAW + 10)))
    assert value.raw.endswith("…[10 characters cut by carwatch]")
    assert len(value.raw) < MAX_DEAD_LETTER_RAW + 50


async def test_a_closed_port_is_broker_unavailable_quickly() -> None:
    """The real aiokafka producer against a port nobody listens on."""
    publisher = LabPublisher(f"kafka://127.0.0.1:{free_port()}", timeout_s=3)
    await publisher.start()  # logs, does not raise: the listener may start before the broker
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unavailable"):
        await publisher.publish(plan([RESULT]))
    assert time.monotonic() - started < 5
    await publisher.stop()


async def test_stopped_publisher_refuses() -> None:
    publisher = LabPublisher("kafka://x:1", producer_factory=factory("ack"))
    await publisher.stop()
    with pytest.raises(BrokerUnavailable, match="shut down"):
        await publisher.publish(plan([RESULT]))


def test_feed_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "feed.toml"
    path.write_text(
        'assigning_authority = "KIDS"\ndefault_timezone = "Europe/Zurich"\n'
        '[local_codes]\n"MRD-FLOW" = "mrd"\n'
    )
    config = load_feed_config(str(path), Hl7Config)
    assert config.assigning_authority == "KIDS" and config.local_codes == {"MRD-FLOW": Analyte.MRD}
    assert load_feed_config(None, Hl7Config) == Hl7Config()
    path.write_text('default_timezone = "Mars/Base"\n')
    with pytest.raises(ValueError, match="default_timezone"):
        load_feed_config(str(path), Hl7Config)
    with pytest.raises(ValueError, match="cannot read"):
        load_feed_config(str(tmp_path / "missing.toml"), Hl7Config)


async def test_many_records_go_in_batches_in_order_one_partition_per_key() -> None:
    results = [RESULT.model_copy(update={"value": float(n)}) for n in range(5)]
    other = RESULT.model_copy(update={"patient_id": "P002"})
    async with LabPublisher("kafka://x:1", producer_factory=factory("ack")) as publisher:
        await publisher.publish(plan([*results, other]))
    sent = FakeProducer.instances[0].sent
    mine = [LabResult.model_validate_json(v).value for _, v, k in sent if k == b"P001"]
    assert mine == [0, 1, 2, 3, 4]  # full batches go out as they fill, in order
    assert [k for _, _, k in sent].count(b"P002") == 1


def test_sasl_never_falls_back_to_plaintext_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from streams.settings import Settings

    sasl = {"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u", "sasl_password": "p"}
    assert Settings(**sasl).security_protocol == "SASL_SSL"  # system CA store, not plaintext
    assert Settings(**sasl, ssl_cafile=Path("/ca.pem")).security_protocol == "SASL_SSL"
    monkeypatch.setenv("CARWATCH_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    assert Settings(**sasl).security_protocol == "SASL_PLAINTEXT"  # only when named
    with pytest.raises(ValidationError, match="needs CARWATCH_SASL_MECHANISM"):
        Settings()
    monkeypatch.delenv("CARWATCH_SECURITY_PROTOCOL")
    with pytest.raises(ValidationError, match="SASL_USERNAME"):
        Settings(sasl_mechanism="PLAIN")


async def test_one_patients_records_of_a_message_stay_consecutive() -> None:
    """Two large messages published at once: no record of one comes between another patient's
    records (the worker applies a specimen together only when its results are consecutive)."""

    def many(patient: str) -> Plan:
        return plan([RESULT.model_copy(update={"patient_id": patient})] * 300)

    async with LabPublisher("kafka://x:1", producer_factory=factory("ack")) as publisher:
        await asyncio.gather(publisher.publish(many("PA")), publisher.publish(many("PB")))
    keys = [k for _, _, k in FakeProducer.instances[0].sent]
    runs = [k for n, k in enumerate(keys) if n == 0 or keys[n - 1] != k]
    assert sorted(runs) == [b"PA", b"PB"] and len(keys) == 600
