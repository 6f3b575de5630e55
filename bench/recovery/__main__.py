"""Recovery (issue 12): a fresh worker rebuilds the table of 100,000 patients with about a year
of labs each from its compacted changelog, on the RocksDB store; target under 60 s.

    python -m bench.recovery                     # 100,000 patients, 8 partitions
    python -m bench.recovery --patients 10000    # a short look

The states are real: ``--templates`` patients' years of labs (``bench.engine.cohort``) run
through the engine, each state then written under many patient ids (``pack``, exactly what the
worker writes) to ``<app id>-patient_state-changelog``, which is created as Faust creates it
(``cleanup.policy=compact``). Then:

1. a fresh worker (empty data directory) recovers the whole changelog: seconds from launch to
   ready, the worker's own ``carwatch_table_recovery_seconds`` (assignment to ready, the
   patient index included), records/s and MB/s, per partition;
2. the same worker restarted: RocksDB already holds the table, only the changelog's tail is read.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from bench.engine.cohort import cohort
from bench.processes import Broker, Worker, wait_until, worker_env
from streams.core.policy import DEFAULT_POLICY
from streams.core.state import PatientState
from streams.metrics import PipelineMetrics
from streams.pipeline.monitor import InRecord, Monitor
from streams.pipeline.store import DictStore, PatientStates, pack, unpack
from streams.shell.topics import TABLE


def template_states(templates: int) -> list[PatientState]:
    """Year-long patients run through the worker's own batch code."""
    monitor = Monitor(DEFAULT_POLICY, PipelineMetrics(CollectorRegistry()))
    store = DictStore()
    states = PatientStates(store)
    lines = list(cohort(templates))
    for start in range(0, len(lines), 1000):
        batch = [
            InRecord(None, line, None, 0, n, None)
            for n, line in enumerate(lines[start : start + 1000])
        ]
        monitor.process(batch, states).persist(states)
    return [unpack(value) for value in store.data.values()]


def write_changelog(broker: Broker, topic: str, patients: int, templates: int) -> tuple[int, float]:
    """Create the compacted changelog and fill it; (records, megabytes)."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=broker.partitions,
                    replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"},
                )
            ]
        )
    finally:
        admin.close()
    states = template_states(templates)
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1
    )
    size = 0
    for n in range(patients):
        state = states[n % len(states)]
        state.patient_id = f"REC{n:07d}"
        value = pack(state)
        size += len(value)
        producer.send(topic, key=state.patient_id.encode(), value=value)
    producer.flush(300)
    producer.close()
    return patients, size / 1e6


def cleanup_policy(broker: Broker, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    for by_name in found.values():
        entry = by_name.get(topic, {}).get("cleanup.policy")
        if entry is not None:
            return str(entry.get("value") if isinstance(entry, dict) else entry)
    return f"unknown ({found})"


def recover(worker: Worker, patients: int) -> tuple[float, float]:
    """(seconds from launch until every patient is indexed, the worker's recovery seconds)."""
    started = time.monotonic()
    worker.start()
    wait_until(
        lambda: worker.metrics().get("carwatch_patients_monitored", 0) >= patients,
        1800,
        "the recovered patients",
        [worker],
        0.2,
    )
    launch_to_ready = time.monotonic() - started
    return launch_to_ready, worker.metrics().get("carwatch_table_recovery_seconds", float("nan"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=39392, help="broker port (controller +1)")
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--templates", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="carwatch-recovery-"))
    broker = Broker(args.port, tmp / "kafka", args.partitions)
    broker.up()
    name = "recovery"
    worker: Worker | None = None
    try:
        topics = broker.topics(name)
        changelog = f"{name}-{TABLE}-changelog"
        print(f"writing {args.patients:,} year-long patient states to {changelog} ...", flush=True)
        records, megabytes = write_changelog(broker, changelog, args.patients, args.templates)
        env = worker_env(
            broker,
            name,
            topics,
            CARWATCH_STORE="rocksdb://",
            CARWATCH_DATA_DIR=str(tmp / "worker"),
            CARWATCH_GROUP_INSTANCE_ID="r0",
        )
        worker = Worker("r0", env, tmp / "worker.log")
        fresh, fresh_own = recover(worker, args.patients)
        worker.stop()
        again, again_own = recover(worker, args.patients)
        policy = cleanup_policy(broker, changelog)
    finally:
        if worker is not None:
            worker.stop()
        broker.down()
    print()
    print(
        f"changelog {changelog}: cleanup.policy={policy}, {records:,} records, {megabytes:,.0f} MB"
    )
    print(
        f"  fresh worker (empty RocksDB): {fresh:.1f} s launch to every patient indexed "
        f"(worker's own recovery: {fresh_own:.1f} s); {records / fresh:,.0f} records/s, "
        f"{megabytes / fresh:,.1f} MB/s; {fresh / args.partitions:.1f} s per partition"
    )
    print(
        f"  restarted worker (RocksDB on disk, tail only): {again:.1f} s "
        f"(worker's own recovery: {again_own:.1f} s)"
    )
    print(f"  per patient-year of state: {megabytes * 1e6 / records:,.0f} B")
    print("  target: fresh recovery of 100,000 patients < 60 s")
    print(json.dumps({"fresh_s": fresh, "restart_s": again, "records": records}))
    return 0 if policy == "compact" else 1


if __name__ == "__main__":
    sys.exit(main())
