"""Real-broker fixtures: one Kafka (scripts/broker.sh) per test session, real worker processes.

The broker runs on non-default ports (``CARWATCH_TEST_KAFKA_PORT``, default 19092, controller
one above) with its state in a temporary directory, so it never meets a developer's broker on
9092. Each test uses its own topic names and app id (``Pipeline``), so tests do not see each
other's records or consumer groups. Every wait is bounded.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

# the integration tests' broker and free ports are the benchmarks' (re-exported for the tests)
from bench.processes import Broker as Broker
from bench.processes import ChildDied
from bench.processes import free_port as free_port

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4


def require_java() -> None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        message = "java is missing: the integration tests run a real Kafka broker (Java 17+)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def running_broker(port: int, controller: int, state: Path, **extra: str) -> Iterator[Broker]:
    """scripts/broker.sh up on these ports and state dir (``extra``: its other settings), and
    down afterwards."""
    started = Broker(port, state, PARTITIONS, controller, extra)
    try:
        started.up()
    except ChildDied as exc:
        pytest.fail(str(exc))
    try:
        yield started
    finally:
        with suppress(ChildDied):  # a broker that will not stop must not fail the session
            started.down()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    require_java()
    port = int(os.environ.get("CARWATCH_TEST_KAFKA_PORT", "19092"))
    with running_broker(port, port + 1, tmp_path_factory.mktemp("kafka")) as started:
        yield started


@pytest.fixture
def strimzi_kafka(broker: Broker, tmp_path: Path) -> Iterator[Any]:
    """A broker like deploy/k8s's Strimzi cluster: SASL_SSL, the users of users.yaml and their
    ACLs enforced, the topics of topics.yaml (tests/integration/k8s_pod.py); ``broker`` fetched
    the jars."""
    from tests.integration.k8s_pod import secure_broker

    with secure_broker(tmp_path) as kafka:
        yield kafka


def scrape(port: int, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the metrics a process serves on 127.0.0.1:port (``None``: not there)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Worker:
    """One ``carwatch worker`` subprocess."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    log_file: IO[bytes]

    def scrape(self) -> str | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.scrape() or ""
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, sample_labels), value in self.samples().items()
            if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
        )

    def consumed(self) -> int:
        return int(self.total("carwatch_messages_consumed_total"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 45) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log_file.close()
        return int(self.process.returncode)


@dataclass
class Pipeline:
    """Topics, app id and clients of one test; ``start_worker`` runs the real worker."""

    broker: Broker
    tmp: Path
    name: str = field(default_factory=lambda: f"it-{uuid.uuid4().hex[:10]}")
    workers: list[Worker] = field(default_factory=list)
    _producer: KafkaProducer | None = None
    _last_ms: int = 0

    @property
    def labs(self) -> str:
        return f"{self.name}.labs"

    @property
    def clinical(self) -> str:
        return f"{self.name}.clinical"

    @property
    def alerts(self) -> str:
        return f"{self.name}.alerts"

    @property
    def deadletter(self) -> str:
        return f"{self.name}.deadletter"

    @property
    def inbound(self) -> str:
        return f"{self.name}.inbound"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "CARWATCH_BROKER_URL": self.broker.url,
            "CARWATCH_APP_ID": self.name,
            "CARWATCH_PARTITIONS": str(PARTITIONS),
            "CARWATCH_LABS_TOPIC": self.labs,
            "CARWATCH_CLINICAL_TOPIC": self.clinical,
            "CARWATCH_ALERTS_TOPIC": self.alerts,
            "CARWATCH_DEADLETTER_TOPIC": self.deadletter,
            "CARWATCH_BROKER_SESSION_TIMEOUT_SECONDS": "8",
            "CARWATCH_TICK_INTERVAL_SECONDS": "3600",
            "CARWATCH_DATA_DIR": str(self.tmp / "data"),
            **extra,
        }

    def start_worker(self, **extra: str) -> Worker:
        metrics_port = free_port()
        log = self.tmp / f"worker-{len(self.workers)}.log"
        env = self.env(CARWATCH_WEB_PORT=str(free_port()), **extra)
        log_file = log.open("wb")
        command = [sys.executable, "-m", "streams.cli", "worker", "--log-level", "info"]
        process = subprocess.Popen(
            [*command, "--metrics-port", str(metrics_port)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(process, metrics_port, log, log_file)
        self.workers.append(worker)
        wait_for(
            lambda: not worker.alive() or "carwatch_messages" in (worker.scrape() or ""),
            90,
            "the worker's /metrics",
        )
        if not worker.alive():
            raise AssertionError(f"worker exited:\n{log.read_text()[-3000:]}")
        # Faust logs "Worker ready" once the partitions are assigned and recovered.
        wait_for(lambda: b"Worker ready" in log.read_bytes(), 90, "the worker to be ready")
        return worker

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.broker.bootstrap, acks="all", linger_ms=2
            )
        return self._producer

    def send(self, line: bytes) -> bool:
        """Send one NDJSON line to the topic its type belongs to; True if clinical."""
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        clinical = isinstance(obj, dict) and obj.get("type") in ("infusion", "clinical_event")
        key = None
        if isinstance(obj, dict) and isinstance(obj.get("patient_id"), str):
            key = obj["patient_id"].strip().encode()
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self.producer.send(
            self.clinical if clinical else self.labs,
            value=line,
            key=key,
            timestamp_ms=self._last_ms,
        )
        return clinical

    def feed_in_order(self, lines: list[bytes], worker: Worker, already: int = 0) -> int:
        """Send ``lines`` so that the worker applies them in file order.

        Kafka orders records within a partition, not across the two input topics: before the
        topic changes, wait until the worker has consumed everything sent so far.
        """
        sent = already
        previous: bool | None = None
        for line in lines:
            clinical = _is_clinical(line)
            if previous is not None and clinical != previous:
                self.producer.flush(30)
                self.wait_consumed(worker, sent)
            self.send(line)
            sent += 1
            previous = clinical
        self.producer.flush(30)
        return sent

    def wait_consumed(self, worker: Worker, count: int, timeout: float = 60) -> None:
        wait_for(lambda: worker.consumed() >= count, timeout, f"{count} records consumed")

    def read(self, topic: str, timeout: float = 5, expect: int | None = None) -> list[Any]:
        """Every record on ``topic`` from the start (until ``expect`` or ``timeout``)."""
        consumer = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=None)
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=300).values():
                    records.extend(batch)
                if expect is not None and len(records) >= expect:
                    break
            return records
        finally:
            consumer.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self._producer is not None:
            self._producer.close(5)


def _is_clinical(line: bytes) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("type") in ("infusion", "clinical_event")


@pytest.fixture
def pipeline(broker: Broker, tmp_path: Path) -> Iterator[Pipeline]:
    from streams.pipeline.topics import ensure_topics
    from streams.settings import Settings

    p = Pipeline(broker, tmp_path)
    ensure_topics(
        Settings(broker_url=broker.url, inbound_topic=p.inbound),
        (p.labs, p.clinical, p.alerts, p.deadletter, p.inbound),
        partitions=PARTITIONS,
    )
    try:
        yield p
    finally:
        p.close()
