"""Benchmark the streaming pipeline on a local broker, with same-run baselines (issue 12).

    python -m bench.pipeline                       # everything, full size
    python -m bench.pipeline --phases latency --latency-seconds 60   # one phase, shorter

One run, one broker (started here by scripts/broker.sh on its own port and state directory,
stopped at the end). Every phase puts a patient's records, ``infusion`` included, on one input
topic keyed by patient id, so every consumer sees them in the same order:

``throughput`` -- the same messages drained by (1) raw aiokafka consume (the ceiling), (2) the
    plain aiokafka loop running the very same batch code (``Monitor``) with a dict as store,
    alerts produced and acknowledged before states are written (what the worker does), (3)
    ``carwatch worker``, (4) a Quix Streams 3.x application running the same per-record step with
    its RocksDB state (``bench/pipeline/quix_app.py``, in a venv of its own under var/bench/),
    for the enrolled stream and for a hospital-wide feed (90 % never infused). Targets: worker >=
    1.5 x Quix and >= 70 % of the plain loop.
``history`` -- the worker's results/s on the same new results for patients who already carry a
    month of history and for patients who carry a year. Target: year >= 80 % of month.
``scale`` -- one worker against two in the same consumer group (static members) on the enrolled
    stream: what a second worker buys on this machine.
``latency`` -- produce -> alert at a steady 1,000 results/s for five minutes over patients with a
    year of history, default settings (the tick timer runs every 60 s); one result in thirty
    raises or resolves an alert. Target p99 < 250 ms.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from bench.engine.cohort import cohort as year_cohort
from bench.processes import (
    REPO,
    Broker,
    Offsets,
    Worker,
    partitions_of,
    produce,
    wait_until,
    worker_env,
)
from streams import synthetic
from streams.core.policy import DEFAULT_POLICY
from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import LABS, InRecord, Monitor
from streams.pipeline.store import DictStore, PatientStates

QUIX_VENV = REPO / "var" / "bench" / "quix-venv"
QUIX_EXTRA = "quix"  # pyproject.toml's extra with the Quix Streams release
Line = tuple[bytes, bytes]  # (key, value)


def line_of(record: dict[str, Any]) -> Line:
    return record["patient_id"].encode(), json.dumps(record, separators=(",", ":")).encode()


def key_of(value: bytes) -> bytes:
    return value[value.index(b'"patient_id":"') + 14 :].split(b'"', 1)[0]


def iso(moment: datetime) -> str:
    return synthetic.iso(moment)


# -- workloads --------------------------------------------------------------------------------


def enrolled_stream(patients: int) -> list[Line]:
    return [line_of(r) for r in synthetic.cohort(patients, prefix="BEN")]


def hospital_stream(records: int) -> list[Line]:
    enrolled = synthetic.cohort(max(1, records // 10 // 17), prefix="BHF")
    return [line_of(r) for r in synthetic.hospital_feed(enrolled, 0.9)]


def history(patients: int, days: int) -> tuple[list[Line], dict[bytes, datetime]]:
    """Year-long patients (``bench.engine.cohort``) cut to their first ``days``; and where each
    patient's history ends."""
    lines: list[Line] = []
    ends: dict[bytes, datetime] = {}
    for value in year_cohort(patients):
        record = json.loads(value)
        key = record["patient_id"].encode()
        moment = datetime.fromisoformat(record.get("collected_at") or record["infused_at"])
        if record["type"] == "infusion":
            ends[key] = moment + timedelta(days=days)
            lines.append((key, value))
        elif moment <= ends[key]:
            lines.append((key, value))
    return lines, ends


def follow_up(ends: dict[bytes, datetime], per_patient: int) -> list[Line]:
    """``per_patient`` routine results for each patient after the end of its history."""
    panel = (("anc", "/uL", 2500), ("platelets", "10*3/uL", 180), ("alc", "/uL", 1200))
    lines = []
    for n in range(per_patient):
        for key, end in ends.items():
            analyte, unit, value = panel[n % len(panel)]
            at = end + timedelta(hours=6 * (n + 1))
            record = {
                "type": "lab_result",
                "patient_id": key.decode(),
                "analyte": analyte,
                "value": value,
                "unit": unit,
                "collected_at": iso(at),
                "status": "final",
                "accession": f"{key.decode()}-f{n}",
                "source": "bench",
            }
            lines.append(line_of(record))
    return lines


# -- the bench --------------------------------------------------------------------------------


class Bench:
    def __init__(self, broker: Broker, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.workers: list[Worker] = []

    def topics(self) -> tuple[str, dict[str, str]]:
        name = f"b-{uuid.uuid4().hex[:6]}"
        return name, self.broker.topics(name)

    async def fill(self, topic: str, lines: list[Line]) -> None:
        await produce(self.broker.bootstrap, topic, lines)

    # -- baselines --------------------------------------------------------------------------

    async def raw_consume(self, topic: str, total: int) -> float:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest"
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
        """consume → ``Monitor.process`` → produce, acknowledged → write states; no framework."""
        consumer = AIOKafkaConsumer(
            topics["labs"], bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest"
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=5)
        await consumer.start()
        await producer.start()
        monitor = Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))
        states = PatientStates(DictStore())
        try:
            got, started = 0, None
            while got < total:
                batch = await consumer.getmany(timeout_ms=2000, max_records=5000)
                if not batch:
                    break
                started = started or time.perf_counter()
                records = [
                    InRecord(r.key, r.value, LABS, r.partition, r.offset, r.timestamp / 1000.0)
                    for rs in batch.values()
                    for r in rs
                ]
                got += len(records)
                out = monitor.process(records, states)
                sent = [await producer.send(topics["alerts"], v, key=k) for k, v in out.alerts]
                sent += [
                    await producer.send(topics["deadletter"], v, key=k) for k, v in out.deadletters
                ]
                await asyncio.gather(*sent)
                out.persist(states)
            return got / (time.perf_counter() - (started or time.perf_counter()))
        finally:
            await consumer.stop()
            await producer.stop()

    def quix(self, name: str, topics: dict[str, str], total: int) -> float:
        python = ensure_quix_venv()
        done = subprocess.run(
            [
                str(python),
                str(REPO / "bench" / "pipeline" / "quix_app.py"),
                "--bootstrap",
                self.broker.bootstrap,
                "--group",
                f"{name}-quix",
                "--input",
                topics["labs"],
                "--alerts",
                f"{topics['alerts']}",
                "--expect",
                str(total),
                "--state-dir",
                str(self.tmp / f"{name}-quix"),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the Quix application failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return float(result["records"]) / float(result["seconds"])

    # -- the worker -------------------------------------------------------------------------

    def start_worker(self, name: str, topics: dict[str, str], **extra: str) -> Worker:
        env = worker_env(
            self.broker,
            name,
            topics,
            CARWATCH_DATA_DIR=str(self.tmp / name),
            CARWATCH_BROKER_SESSION_TIMEOUT_SECONDS="8",
            **extra,
        )
        worker = Worker(name, env, self.tmp / f"{name}.log").start()
        self.workers.append(worker)
        wait_until(lambda: bool(worker.metrics()), 120, "the worker's metrics", [worker])
        return worker

    def drain_rate(self, worker: Worker, topic: str, lines: list[Line], before: float = 0) -> float:
        """Results/s of a running ``worker`` over ``lines``, timed from the start of filling
        ``topic`` with them (the fill is many times faster than the worker) until consumed."""
        started = time.perf_counter()
        asyncio.run(self.fill(topic, lines))
        total = before + len(lines)
        wait_drained(lambda: worker.consumed() or 0, total, [worker])
        return len(lines) / (time.perf_counter() - started)

    def ready_worker(self, name: str, topics: dict[str, str]) -> Worker:
        """A worker with its partitions assigned (its first record consumed)."""
        worker = self.start_worker(name, topics)
        asyncio.run(self.fill(topics["labs"], [line_of({"type": "bench", "patient_id": "-"})]))
        wait_until(lambda: (worker.consumed() or 0) >= 1, 120, "the first record", [worker])
        return worker

    def worker_throughput(self, name: str, topics: dict[str, str], lines: list[Line]) -> float:
        """Results/s of a worker started on a backlog filled before it: from its first batch to
        the last record, as the plain loop and the Quix application are timed (a fill that runs
        while the worker drains takes the machine's second core from it)."""
        asyncio.run(self.fill(topics["labs"], lines))
        worker = self.start_worker(name, topics)
        try:
            first = wait_until(
                lambda: worker.consumed() or 0, 300, "the first batch", [worker], 0.02
            )
            started = time.perf_counter()
            wait_drained(lambda: worker.consumed() or 0, len(lines), [worker])
            return (len(lines) - first) / (time.perf_counter() - started)
        finally:
            worker.stop()

    def workers_throughput(self, count: int, lines: list[Line]) -> float:
        """Results/s of ``count`` workers in one group draining ``lines`` (filled while they
        run, as in ``drain_rate``)."""
        name, topics = self.topics()
        group = [
            self.start_worker(
                f"{name}-{n}", topics, CARWATCH_APP_ID=name, CARWATCH_GROUP_INSTANCE_ID=f"w{n}"
            )
            for n in range(count)
        ]
        try:
            warm = [line_of({"type": "bench", "patient_id": f"-{n}"}) for n in range(64)]
            asyncio.run(self.fill(topics["labs"], warm))
            wait_until(
                lambda: (
                    sum(w.consumed() or 0 for w in group) >= len(warm)
                    and all(w.consumed() for w in group)
                ),
                120,
                "every worker's first record",
                group,
            )
            started = time.perf_counter()
            asyncio.run(self.fill(topics["labs"], lines))
            total = len(warm) + len(lines)
            wait_drained(lambda: sum(w.consumed() or 0 for w in group), total, group)
            return len(lines) / (time.perf_counter() - started)
        finally:
            for worker in group:
                worker.stop()

    def worker_with_history(self, days: int, patients: int, per_patient: int) -> float:
        name, topics = self.topics()
        lines, ends = history(patients, days)
        worker = self.ready_worker(name, topics)
        try:
            self.drain_rate(worker, topics["labs"], lines, before=1)
            new = follow_up(ends, per_patient)
            return self.drain_rate(worker, topics["labs"], new, before=1 + len(lines))
        finally:
            worker.stop()

    def latency(self, patients: int, rate: float, seconds: float) -> list[float]:
        name, topics = self.topics()
        lines, ends = history(patients, 365)
        worker = self.ready_worker(name, topics)
        try:
            self.drain_rate(worker, topics["labs"], lines, before=1)
            self.changelog_settled(name, worker)
            return asyncio.run(self._latency(worker, topics, ends, rate, seconds))
        finally:
            worker.stop()

    def changelog_settled(self, name: str, worker: Worker) -> None:
        """Wait until the worker has written the states of the history load: its changelog's
        end offsets stand still for two seconds. (Consumed is not written: the latency phase
        would otherwise measure its first alerts queued behind megabytes of states.)"""
        offsets = Offsets(self.broker.bootstrap)
        changelog = partitions_of([f"{name}-patient_state-changelog"], self.broker.partitions)
        seen: list[dict[Any, int] | None] = [None]

        def still() -> bool:
            ends = offsets.ends(changelog)
            settled = ends is not None and ends == seen[0]
            seen[0] = ends
            return settled

        try:
            wait_until(still, 600, "the history's states written", [worker], interval=2.0)
        finally:
            offsets.close()

    async def _latency(
        self,
        worker: Worker,
        topics: dict[str, str],
        ends: dict[bytes, datetime],
        rate: float,
        seconds: float,
    ) -> list[float]:
        sent_at: dict[tuple[str, str], float] = {}
        received: list[float] = []
        consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap)
        await consumer.start()
        tps = [TopicPartition(topics["alerts"], p) for p in range(self.broker.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=0)
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
        keys = list(ends)
        rng = random.Random(5)
        low: set[bytes] = set()
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            worker.check()
            key = keys[i % len(keys)]
            step = i // len(keys)
            collected = iso(ends[key] + timedelta(days=1 + step, minutes=i % 600))
            record = {
                "type": "lab_result",
                "patient_id": key.decode(),
                "analyte": "alc",
                "value": 1200,
                "unit": "/uL",
                "collected_at": collected,
                "status": "final",
                "accession": f"{key.decode()}-l{i}",
                "source": "bench",
            }
            if rng.random() < 1 / 30:  # IgG across 400 mg/dL: raises or resolves an alert
                record.update(analyte="igg", unit="mg/dL", value=450 if key in low else 300)
                low ^= {key}
                sent_at[(key.decode(), collected.replace("+00:00", "Z"))] = time.time()
            await producer.send(topics["labs"], json.dumps(record).encode(), key=key)
        await producer.flush()
        await asyncio.sleep(5)
        collector.cancel()
        await producer.stop()
        await consumer.stop()
        return received


# -- the Quix venv ----------------------------------------------------------------------------


def wait_drained(consumed: Callable[[], float], total: float, children: list[Worker]) -> None:
    """Wait until ``consumed()`` reaches ``total``: every 0.5 s up to 90 %, then every 20 ms.
    Each poll scrapes the worker's /metrics, which takes the worker's interpreter lock; scraped
    20 times a second throughout, the worker lost several per cent of its rate to the bench."""
    wait_until(lambda: consumed() >= 0.9 * total, 3600, "most of the backlog", children, 0.5)
    wait_until(lambda: consumed() >= total, 3600, "the backlog", children, 0.02)


def ensure_quix_venv() -> Path:
    """``var/bench/quix-venv`` with this project and its ``quix`` extra (created once)."""
    python = QUIX_VENV / "bin" / "python"
    stamp = QUIX_VENV / ".carwatch-installed"
    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirement = " ".join(wanted["optional-dependencies"][QUIX_EXTRA])
    if stamp.exists() and stamp.read_text() == requirement:
        return python
    print(f"creating {QUIX_VENV} (this project and {requirement}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{REPO}[{QUIX_EXTRA}]"], check=True)
    stamp.write_text(requirement)
    return python


# -- the report -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rows(results: dict[str, float]) -> Iterator[str]:
    for name, value in results.items():
        yield f"  {name:<62} {value:>12,.1f}"


def throughput(bench: Bench, label: str, lines: list[Line], quix: bool) -> dict[str, float]:
    name, topics = bench.topics()
    print(f"filling {label}: {len(lines):,} records ...", flush=True)
    asyncio.run(bench.fill(topics["labs"], lines))
    total = len(lines)
    found = {
        f"raw aiokafka consume, {label} (msg/s)": asyncio.run(
            bench.raw_consume(topics["labs"], total)
        )
    }
    plain = asyncio.run(bench.plain_loop(topics, total))
    found[f"plain loop consume→step→produce, {label} (results/s)"] = plain
    worker = bench.worker_throughput(f"{name}-w", bench.broker.topics(f"{name}-w"), lines)
    found[f"carwatch worker, {label} (results/s)"] = worker
    found[f"worker / plain loop, {label} (%)"] = 100 * worker / plain
    if quix:
        peer = bench.quix(name, topics, total)
        found[f"Quix Streams 3.28, {label} (results/s)"] = peer
        found[f"worker / Quix Streams, {label} (x)"] = worker / peer
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=39092, help="broker port (controller +1)")
    parser.add_argument("--phases", default="throughput,history,scale,latency")
    parser.add_argument("--enrolled-patients", type=int, default=6000)
    parser.add_argument("--hospital-records", type=int, default=300_000)
    parser.add_argument("--no-quix", action="store_true", help="skip the Quix Streams peer")
    parser.add_argument("--history-patients", type=int, default=2000)
    parser.add_argument("--history-results", type=int, default=15, help="new results per patient")
    parser.add_argument("--latency-patients", type=int, default=2000)
    parser.add_argument("--latency-seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=1000)
    args = parser.parse_args()
    phases = set(args.phases.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="carwatch-bench-"))
    broker = Broker(args.port, tmp / "kafka")
    broker.up()
    bench = Bench(broker, tmp)
    results: dict[str, float] = {}
    latencies: list[float] = []
    try:
        if "throughput" in phases:
            results |= throughput(
                bench, "enrolled", enrolled_stream(args.enrolled_patients), not args.no_quix
            )
            results |= throughput(
                bench,
                "hospital 90% not enrolled",
                hospital_stream(args.hospital_records),
                not args.no_quix,
            )
        if "history" in phases:
            print("measuring the worker with a month and a year of history ...", flush=True)
            month = bench.worker_with_history(31, args.history_patients, args.history_results)
            year = bench.worker_with_history(365, args.history_patients, args.history_results)
            results["worker, new results over a month of history (results/s)"] = month
            results["worker, new results over a year of history (results/s)"] = year
            results["year / month of history (%)"] = 100 * year / month
        if "scale" in phases:
            print("measuring one worker against two in one group ...", flush=True)
            lines = enrolled_stream(args.enrolled_patients)
            one = bench.workers_throughput(1, lines)
            two = bench.workers_throughput(2, lines)
            results["one worker, enrolled (results/s)"] = one
            results["two workers in one group, enrolled (results/s)"] = two
            results["two / one worker (x)"] = two / one
        if "latency" in phases:
            print(
                f"measuring latency at {args.rate:,.0f} results/s for {args.latency_seconds:.0f} s ...",
                flush=True,
            )
            latencies = bench.latency(args.latency_patients, args.rate, args.latency_seconds)
    finally:
        for worker in bench.workers:
            worker.stop()
        broker.down()
    print()
    print("CAR-T Watch pipeline benchmark (one broker, same messages per phase)")
    for row in rows(results):
        print(row)
    if "latency" in phases:
        if latencies:
            print(
                f"  produce→alert at {args.rate:,.0f}/s over a year of history: n={len(latencies):,}  "
                f"p50={1000 * statistics.median(latencies):.0f} ms  "
                f"p95={1000 * percentile(latencies, 0.95):.0f} ms  "
                f"p99={1000 * percentile(latencies, 0.99):.0f} ms  "
                f"max={1000 * max(latencies):.0f} ms"
            )
        else:
            print("  produce→alert latency: no alerts received")
    print(f"  (logs in {tmp})")


if __name__ == "__main__":
    main()
