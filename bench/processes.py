"""The real parts the benchmarks and the fault harness run: a broker, workers, group offsets.

Every wait polls its children: when a worker or the broker dies unexpectedly, the wait stops
within a second with ``ChildDied`` carrying the child's last log lines, instead of waiting for
its timeout (issue 14).
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka_clients import require_reachable
from streams.pipeline.topics import ensure_topics
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class ChildDied(RuntimeError):
    """A process the harness started exited while it was needed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Broker:
    """One Kafka broker of ``scripts/broker.sh`` on its own ports and state directory."""

    port: int
    state: Path
    partitions: int = 8
    controller_port: int = 0
    #: further scripts/broker.sh settings (``CARWATCH_KAFKA_SASL_SSL_PORT`` ...)
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.controller_port = self.controller_port or self.port + 1

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str) -> None:
        env = {
            **os.environ,
            "CARWATCH_KAFKA_PORT": str(self.port),
            "CARWATCH_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "CARWATCH_STATE_DIR": str(self.state),
            "CARWATCH_PARTITIONS": str(self.partitions),
            **self.extra,
        }
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "broker.sh"), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise ChildDied(f"broker.sh {command} failed:\n{done.stdout}\n{done.stderr}")

    def up(self) -> None:
        self._run("up")

    def down(self) -> None:
        self._run("down")

    def restart(self, pause: float = 0.0) -> None:
        self.down()
        time.sleep(pause)
        self.up()

    def settings(self) -> Settings:
        return Settings(broker_url=self.url)

    def topics(self, name: str) -> dict[str, str]:
        """Create the four pipeline topics of a run named ``name``; return them by role."""
        names = {role: f"{name}.{role}" for role in ("labs", "clinical", "alerts", "deadletter")}
        ensure_topics(self.settings(), names.values(), partitions=self.partitions)
        return names


@dataclass
class Worker:
    """One ``carwatch worker`` subprocess with its own metrics port and log."""

    name: str
    env: dict[str, str]
    log: Path
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    expected_exit: bool = False

    def start(self) -> "Worker":
        self.env["CARWATCH_METRICS_PORT"] = str(self.metrics_port)
        self.env.setdefault("CARWATCH_WEB_PORT", str(free_port()))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--log-level", "info"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.expected_exit = False
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Raise ``ChildDied`` (with the last log lines) if the worker exited unexpectedly."""
        if self.process is not None and not self.alive and not self.expected_exit:
            raise ChildDied(
                f"worker {self.name} exited with {self.process.returncode}; its last lines:\n"
                f"{tail(self.log)}"
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit."""
        self.expected_exit = True
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        self.expected_exit = True
        if self.process is None:
            return None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def metrics(self) -> dict[str, float]:
        """Every sample of the worker's /metrics summed by name (labels dropped); {} if down."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def consumed(self) -> float | None:
        return self.metrics().get("carwatch_messages_consumed_total")


def worker_env(broker: Broker, app_id: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CARWATCH_BROKER_URL": broker.url,
        "CARWATCH_APP_ID": app_id,
        "CARWATCH_PARTITIONS": str(broker.partitions),
        "CARWATCH_LABS_TOPIC": topics["labs"],
        "CARWATCH_CLINICAL_TOPIC": topics["clinical"],
        "CARWATCH_ALERTS_TOPIC": topics["alerts"],
        "CARWATCH_DEADLETTER_TOPIC": topics["deadletter"],
        **extra,
    }


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    children: Iterable[Worker] = (),
    interval: float = 0.2,
) -> T:
    """Poll ``condition`` until it is truthy; fail at once when a child dies."""
    deadline = time.monotonic() + timeout
    watched = list(children)
    while True:
        for child in watched:
            child.check()
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Offsets:
    """End offsets of topics and committed offsets of a group, read without joining it."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: KafkaAdminClient | None = None
        self._consumer: KafkaConsumer | None = None

    def _clients(self) -> tuple[KafkaAdminClient, KafkaConsumer]:
        if self._admin is None or self._consumer is None:
            require_reachable(self.bootstrap)  # a broker that is away: no leaked client thread
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=5000
            )
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        return self._admin, self._consumer

    def committed(
        self, group: str, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int] | None:
        """Committed offset per partition (0 where none yet); None while the broker is away."""
        try:
            admin, _ = self._clients()
            found = admin.list_group_offsets({group: list(tps)}).get(group, {})
        except (KafkaError, OSError):
            self.close()
            return None
        return {tp: max(0, found[tp].offset) if tp in found else 0 for tp in tps}

    def ends(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int] | None:
        try:
            _, consumer = self._clients()
            ends: dict[TopicPartition, int] = consumer.end_offsets(list(tps))
        except (KafkaError, OSError, AssertionError):
            self.close()
            return None
        return ends

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                with suppress(Exception):  # closing a client of a broker that is gone
                    client.close()
        self._admin = self._consumer = None


def partitions_of(topics: Iterable[str], partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic in topics for p in range(partitions)]


def read_all(bootstrap: str, topic: str, partitions: int, idle: float = 3.0) -> list[Any]:
    """Every record of ``topic`` from the start, until nothing new arrives for ``idle`` s."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = partitions_of([topic], partitions)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[Any] = []
        last_new = time.monotonic()
        while time.monotonic() - last_new < idle:
            batch = consumer.poll(timeout_ms=300)
            for found in batch.values():
                records.extend(found)
                last_new = time.monotonic()
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
        return records
    finally:
        consumer.close()


async def produce(bootstrap: str, topic: str, lines: Iterable[tuple[bytes, bytes]]) -> None:
    """Publish (key, value) pairs in order, as fast as the broker takes them (a backlog)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = []
        for key, value in lines:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
