"""The message store, ``carwatch reprocess`` and ``carwatch deadletter list|show|retry`` against the
real broker (issue 11, Deliver 5)."""

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import decode_record
from schemas.vocab import Outcome, RejectReason
from streams.core.engine import apply_all
from streams.core.policy import Policy
from streams.core.state import PatientState
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.mllp import MllpListener, MllpService
from streams.listeners.pool import ParsePool
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def oru(control: str, pid: str, *obx: str) -> bytes:
    return (
        "\r".join(
            [
                f"MSH|^~\\&|LIS|LAB|CW|H|20260131120000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1",
                f"PID|1||{pid}",
                "OBR|1|PL-R|LAB-R1|X^X^L|||20260131080000",
                *obx,
            ]
        ).encode()
        + b"\r"
    )


def carwatch(topics: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "CARWATCH_BROKER_URL": f"kafka://{topics.bootstrap}",
        "CARWATCH_LABS_TOPIC": topics.labs,
        "CARWATCH_DEADLETTER_TOPIC": topics.deadletter,
        "CARWATCH_INBOUND_TOPIC": topics.inbound,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def send(port: int, *messages: bytes) -> list[bytes]:
    def run() -> list[bytes]:
        with MLLPClient("127.0.0.1", port) as client:
            client.socket.settimeout(30)
            return [bytes(client.send_message(m)) for m in messages]

    return await asyncio.wait_for(asyncio.to_thread(run), 60)


async def test_reprocess_publishes_what_now_maps_and_twice_changes_nothing(
    topics: Any, consume: Any, thread_pool: ParsePool, tmp_path: Path
) -> None:
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    async with topics.publisher() as publisher:
        service = MllpService(publisher, thread_pool, Hl7Config(assigning_authority="KIDS"))
        listener = MllpListener(service, port=0)
        await listener.start()
        try:
            acks = await send(
                listener.port,
                oru("R-1", "RP-1^^^KIDS^MR", "OBX|1|ST|MRD-X^MRD by flow^L||not detected||||||F"),
                oru("R-2", "RP-2^^^OTHER^MR", "OBX|1|NM|751-8^ANC^LN||420|/uL|||||F"),
            )
        finally:
            await listener.close(grace_s=5)
    assert b"MSA|AA|R-1|1 results: 0 accepted, 1 not monitored" in acks[0]
    assert b"MSA|AE|R-2" in acks[1]  # missing_patient_id: PID-3 of another authority
    assert await consume(topics.labs, 0, 2) == []

    feed = tmp_path / "kids.toml"
    feed.write_text('assigning_authority = "KIDS"\n[local_codes]\n"MRD-X" = "mrd"\n')
    first = carwatch(topics, "reprocess", "--since", since, "--feed-config", str(feed))
    assert first.returncode == 0, first.stderr
    assert "messages 2, results 1 published, rejected 1 (missing_patient_id=1)" in first.stderr
    second = carwatch(topics, "reprocess", "--since", since, "--feed-config", str(feed))
    assert second.returncode == 0, second.stderr
    records = await consume(topics.labs, 2)
    results = [LabResult.model_validate_json(r.value) for r in records]
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0].analyte.value if results[0].analyte else None, results[0].detected) == (
        "mrd",
        False,
    )
    # Applied by the engine, the second copy is a duplicate: reprocessing twice changes nothing.
    infusion = decode_record(
        {"type": "infusion", "patient_id": "RP-1", "infused_at": "2026-01-01T10:00:00Z"}
    )
    steps = apply_all(PatientState.new("RP-1"), [infusion, *results], Policy())  # type: ignore[list-item]
    assert [s.outcome for s in steps] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.DUPLICATE]

    listed = carwatch(topics, "deadletter", "list", "--reason", "missing_patient_id")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    letter_id, _, reason, source, location = line.split("\t")
    assert (reason, source, location) == ("missing_patient_id", "mllp", "message R-2")
    shown = carwatch(topics, "deadletter", "show", letter_id)
    letter = DeadLetter.model_validate_json(shown.stdout)
    assert letter.reason is RejectReason.MISSING_PATIENT_ID and letter.inbound
    other = tmp_path / "other.toml"
    other.write_text('assigning_authority = "OTHER"\n')
    retried = carwatch(topics, "deadletter", "retry", letter_id, "--feed-config", str(other))
    assert retried.returncode == 0, retried.stderr
    assert "results 1 published" in retried.stderr
    records = await consume(topics.labs, 3)
    assert {LabResult.model_validate_json(r.value).patient_id for r in records} == {"RP-1", "RP-2"}


async def test_an_ndjson_dead_letter_is_retried_to_its_input_topic(
    topics: Any, consume: Any
) -> None:
    from streams.listeners.publisher import LabPublisher

    line = json.dumps(
        {
            "type": "lab_result",
            "patient_id": "ND-1",
            "analyte": "anc",
            "value": 420,
            "unit": "/uL",
            "collected_at": "2026-01-05T08:00:00Z",
        }
    )
    letter = DeadLetter(
        reason=RejectReason.UNKNOWN_UNIT,
        details=(),
        raw=line,
        source="carwatch.labs",
        location="carwatch.labs:0:7",
    )
    async with LabPublisher(topics.bootstrap, deadletter_topic=topics.deadletter) as publisher:
        await publisher.publish_records(
            topics.deadletter, [(b"ND-1", letter.model_dump_json().encode())]
        )
    listed = carwatch(topics, "deadletter", "list")
    (line_out,) = listed.stdout.splitlines()
    retried = carwatch(topics, "deadletter", "retry", line_out.split("\t")[0])
    assert retried.returncode == 0, retried.stderr
    assert f"accepted, published to {topics.labs}" in retried.stderr
    (record,) = await consume(topics.labs, 1)
    assert LabResult.model_validate_json(record.value).patient_id == "ND-1"
    missing = carwatch(topics, "deadletter", "show", "9:9999")
    assert missing.returncode == 2 and missing.stderr.startswith("carwatch: error: no dead letter")
    assert carwatch(topics, "deadletter", "show", "nonsense").returncode == 2
