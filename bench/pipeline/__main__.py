"""Benchmark the streaming pipeline on a local broker, with same-run baselines.

    python -m bench.pipeline [--enrolled-patients 1200] [--hospital-records 200000]

One run, one broker (started here by scripts/broker.sh on its own port and state directory,
stopped at the end), the same messages for every figure:

(a) worker throughput -- ``carwatch worker`` (real Faust worker, memory store) drains a
    pre-filled topic: an enrolled-patient stream, and a hospital-wide feed (90 % never infused);
(b) baselines on the same topics -- raw aiokafka consume, and a plain aiokafka loop running the
    very same batch code (``streams.pipeline.monitor.Monitor``) with a dict as state and alerts produced;
(c) produce-to-alert latency through the worker at a steady 1,000 results/s (time from the
    producer's send to the alert event's arrival at a consumer of the alerts topic).

Targets (issue #3): worker ≥ 50 % of the plain loop; ≥ 20,000 results/s on the 90 %-not-enrolled
feed; p99 < 250 ms at 1,000/s. Not part of the test command.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streams import synthetic
from streams.core.policy import DEFAULT_POLICY
from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import CLINICAL_TOPIC, LABS, InRecord, Monitor
from streams.pipeline.store import DictStore, PatientStates
from streams.pipeline.topics import ensure_topics
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 8


class Bench:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"kafka://127.0.0.1:{port}"
        self.bootstrap = f"127.0.0.1:{port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="carwatch-bench-"))

    def topics(self, name: str) -> dict[str, str]:
        names = {
            "labs": f"{name}.labs",
            "clinical": f"{name}.clinical",
            "alerts": f"{name}.alerts",
            "deadletter": f"{name}.deadletter",
        }
        ensure_topics(Settings(broker_url=self.url), names.values(), partitions=PARTITIONS)
        return names

    # -- producing --------------------------------------------------------------------------

    async def fill(self, topics: dict[str, str], records: list[dict[str, Any]]) -> None:
        """Produce ``records`` in order; a clinical record is acknowledged before what follows."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=10, max_batch_size=256 * 1024
        )
        await producer.start()
        try:
            pending = []
            for record in records:
                clinical = synthetic.topic_of(record) == "clinical"
                topic = topics["clinical" if clinical else "labs"]
                value = json.dumps(record, separators=(",", ":")).encode()
                future = await producer.send(topic, value, key=record["patient_id"].encode())
                if clinical:
                    await future
                else:
                    pending.append(future)
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    # -- baselines ----------------------------------------------------------------------------

    async def raw_consume(self, topics: dict[str, str], total: int) -> float:
        consumer = AIOKafkaConsumer(
            topics["labs"],
            topics["clinical"],
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        try:
            got, started = 0, None
            while got < total:
                batch = await consumer.getmany(timeout_ms=2000, max_records=5000)
                if not batch:
                    break
                started = started or time.perf_counter()
                got += sum(len(r) for r in batch.values())
            return got / (time.perf_counter() - (started or time.perf_counter()))
        finally:
            await consumer.stop()

    async def plain_loop(self, topics: dict[str, str], total: int) -> float:
        """consume → decode → apply → produce, no framework (same ``Monitor`` code)."""
        consumer = AIOKafkaConsumer(
            topics["labs"],
            topics["clinical"],
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await consumer.start()
        await producer.start()
        monitor = Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))
        store = PatientStates(DictStore())
        labels = {topics["labs"]: LABS, topics["clinical"]: CLINICAL_TOPIC}
        try:
            got, started = 0, None
            while got < total:
                batch = await consumer.getmany(timeout_ms=2000, max_records=2000)
                if not batch:
                    break
                started = started or time.perf_counter()
                records = [
                    InRecord(
                        r.key,
                        r.value,
                        labels.get(r.topic),
                        r.partition,
                        r.offset,
                        r.timestamp / 1000.0,
                    )
                    for rs in batch.values()
                    for r in rs
                ]
                got += len(records)
                out = monitor.process(records, store)
                for key, value in out.alerts:
                    await producer.send(topics["alerts"], value, key=key)
                for dl_key, value in out.deadletters:
                    await producer.send(topics["deadletter"], value, key=dl_key)
                out.persist(store)
            await producer.flush()
            return got / (time.perf_counter() - (started or time.perf_counter()))
        finally:
            await consumer.stop()
            await producer.stop()

    # -- the worker ---------------------------------------------------------------------------

    def start_worker(
        self, name: str, topics: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], int]:
        metrics_port = _free_port()
        env = {
            **os.environ,
            "CARWATCH_BROKER_URL": self.url,
            "CARWATCH_APP_ID": name,
            "CARWATCH_PARTITIONS": str(PARTITIONS),
            "CARWATCH_LABS_TOPIC": topics["labs"],
            "CARWATCH_CLINICAL_TOPIC": topics["clinical"],
            "CARWATCH_ALERTS_TOPIC": topics["alerts"],
            "CARWATCH_DEADLETTER_TOPIC": topics["deadletter"],
            "CARWATCH_BROKER_SESSION_TIMEOUT_SECONDS": "8",
            "CARWATCH_TICK_INTERVAL_SECONDS": "3600",
            "CARWATCH_METRICS_PORT": str(metrics_port),
            "CARWATCH_WEB_PORT": str(_free_port()),
        }
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return process, metrics_port

    def worker_throughput(self, name: str, topics: dict[str, str], total: int) -> float:
        launched = time.perf_counter()
        process, port = self.start_worker(name, topics)
        try:
            # Timed from the first scrape that shows part of the backlog consumed; when the whole
            # backlog drains before such a scrape, from the worker's launch (start-up included:
            # the figure then under-states, never over-states, throughput).
            up: float | None = None
            first: tuple[float, float] | None = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                consumed = _consumed(port)
                now = time.perf_counter()
                if consumed is None:
                    time.sleep(0.1)
                    continue
                if up is None:
                    up = now
                if consumed and first is None and consumed < total:
                    first = (now, consumed)
                if consumed >= total:
                    start, before = first if first is not None else (launched, 0.0)
                    return (consumed - before) / (now - start)
                time.sleep(0.05)
            raise RuntimeError(f"worker {name} did not finish (see {self.tmp})")
        finally:
            _stop(process)

    def latency(self, rate: float, seconds: float) -> list[float]:
        name = f"lat-{uuid.uuid4().hex[:6]}"
        topics = self.topics(name)
        process, port = self.start_worker(name, topics)
        try:
            _wait(lambda: _consumed(port) is not None, 90)
            time.sleep(3)  # partitions assigned
            return asyncio.run(self._latency(topics, rate, seconds))
        finally:
            _stop(process)

    async def _latency(self, topics: dict[str, str], rate: float, seconds: float) -> list[float]:
        # 2,000 patients: each gets at most ~10 results in a 20 s run. With 200, every patient
        # would collect ~50 alert episodes (one IgG flip a day) within 100 days -- far beyond any
        # clinical course -- and the per-record cost grows with a patient's history and alerts,
        # so the worker falls behind after ~10 s: that measures the workload, not the pipeline.
        patients = 2000
        day0 = datetime.now(UTC) - timedelta(days=400)
        sent_at: dict[tuple[str, str], float] = {}
        received: list[float] = []
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        tps = [TopicPartition(topics["alerts"], p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await producer.start()

        async def collect() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for rs in batch.values():
                    for r in rs:
                        alert = json.loads(r.value)
                        sent = sent_at.get((alert["patient_id"], alert["event_time"]))
                        if sent is not None:
                            received.append(now - sent)

        collector = asyncio.create_task(collect())
        for p in range(patients):  # enrol first
            infusion = {
                "type": "infusion",
                "patient_id": f"LAT-{p:04d}",
                "infused_at": synthetic.iso(day0),
                "hct_eligible": False,
            }
            await producer.send_and_wait(
                topics["clinical"],
                json.dumps(infusion).encode(),
                key=infusion["patient_id"].encode(),
            )
        await asyncio.sleep(2)
        started = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pid = f"LAT-{i % patients:04d}"
            step = i // patients
            collected = synthetic.iso(day0 + timedelta(days=1 + step, hours=i % 12))
            # IgG alternating below / above 400 mg/dL: every result raises or resolves an alert
            record = {
                "type": "lab_result",
                "patient_id": pid,
                "analyte": "igg",
                "value": 350 if step % 2 == 0 else 450,
                "unit": "mg/dL",
                "collected_at": collected,
                "accession": f"{pid}-{step}",
                "source": "bench",
            }
            sent_at[(pid, collected)] = time.time()
            await producer.send(topics["labs"], json.dumps(record).encode(), key=pid.encode())
        await producer.flush()
        await asyncio.sleep(3)
        collector.cancel()
        await producer.stop()
        await consumer.stop()
        return received


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _consumed(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "carwatch_messages_consumed":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _broker(port: int, state: Path, command: str) -> None:
    env = {
        **os.environ,
        "CARWATCH_KAFKA_PORT": str(port),
        "CARWATCH_KAFKA_CONTROLLER_PORT": str(port + 1),
        "CARWATCH_STATE_DIR": str(state),
        "CARWATCH_PARTITIONS": str(PARTITIONS),
    }
    subprocess.run(["bash", str(REPO / "scripts" / "broker.sh"), command], env=env, check=True)


def _rows(results: dict[str, float]) -> Iterator[str]:
    for name, value in results.items():
        yield f"  {name:<58} {value:>12,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=39092)
    parser.add_argument("--enrolled-patients", type=int, default=1200)
    parser.add_argument("--hospital-records", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument(
        "--only-latency", action="store_true", help="Skip the throughput phases (a quick look)."
    )
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="carwatch-bench-kafka-"))
    _broker(args.port, state, "up")
    bench = Bench(args.port)
    try:
        now = datetime.now(UTC)
        enrolled = synthetic.cohort(args.enrolled_patients, now, prefix="BEN")
        mixed_enrolled = synthetic.cohort(
            max(1, args.hospital_records // 10 // 17), now, prefix="BHF"
        )
        hospital = synthetic.hospital_feed(mixed_enrolled, 0.9, now)
        streams = {"enrolled": enrolled, "hospital (90% not enrolled)": hospital}
        if args.only_latency:
            streams = {}
        results: dict[str, float] = {}
        for label, records in streams.items():
            name = f"b-{uuid.uuid4().hex[:6]}"
            topics = bench.topics(name)
            print(f"filling {label}: {len(records):,} records ...", flush=True)
            asyncio.run(bench.fill(topics, records))
            # the baselines run first: the worker's commits then do not help or hurt them
            results[f"raw aiokafka consume, {label} (msg/s)"] = asyncio.run(
                bench.raw_consume(topics, len(records))
            )
            plain = asyncio.run(bench.plain_loop(topics, len(records)))
            results[f"plain loop decode→apply→produce, {label} (results/s)"] = plain
            worker = bench.worker_throughput(name, topics, len(records))
            results[f"carwatch worker, {label} (results/s)"] = worker
            results[f"worker / plain loop, {label} (%)"] = 100 * worker / plain
        print("measuring latency at 1,000 results/s ...", flush=True)
        latencies = bench.latency(1000, args.latency_seconds)
        print()
        print("CAR-T Watch pipeline benchmark (one broker, same messages; 2 cores)")
        for row in _rows(results):
            print(row)
        if latencies:
            print(
                f"  produce→alert latency at 1,000/s: n={len(latencies):,}  "
                f"p50={1000 * statistics.median(latencies):.0f} ms  "
                f"p99={1000 * _percentile(latencies, 0.99):.0f} ms  "
                f"max={1000 * max(latencies):.0f} ms"
            )
        else:
            print("  produce→alert latency: no alerts received")
        print(f"  (worker logs in {bench.tmp})")
    finally:
        _broker(args.port, state, "down")


if __name__ == "__main__":
    main()
