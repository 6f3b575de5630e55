"""The fault run: one synthetic file, the real worker under SIGKILLs, broker restarts and a
1 → 2 → 1 rebalance, compared with ``carwatch replay`` of the same file (issue 12).

Order of the run:

1. A cohort of synthetic patients (``streams.synthetic``: every rule's story) mixed with
   never-infused hospital results, written to one NDJSON file in the order it is published:
   every clinical record first, then the lab results in feed order. Kafka orders records within
   a partition, not across the two input topics; publishing the clinical topic (and waiting until
   the worker has committed it) before the labs makes the file order the order the worker sees,
   so ``carwatch replay`` of that file is the exact expectation.
2. The broker (``scripts/broker.sh``, its own ports and state) and worker ``w0`` start; the labs
   are published at ``rate`` records/s while the faults happen at random moments: SIGKILL of a
   worker (restarted at once under the same static-membership id), broker restarts (the
   publisher pauses; the workers keep running), worker ``w1`` joining the group and leaving it.
   After each restart the time to the group's first committed progress is measured.
3. When every input offset is committed, ``carwatch.alerts`` is read back, re-deliveries dropped
   by ``event_id`` (as subscribers do), and compared with the replay: lost, spurious and
   surviving duplicate alert events must all be 0, and each patient's events in the same order.
4. The tick: a worker with a short tick interval raises the wall-clock alerts
   (``monitoring_gap``); they must be those of ``carwatch replay --now`` at that time.

Scale-in with static membership: a member that stops does not leave the group (a restart
under its id would otherwise rebalance twice); the run removes ``w1`` from the group as an
operator does (``kafka-consumer-groups --delete --members``; here kafka-python's
``remove_group_members``), else its partitions would wait out the session timeout.
"""

import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, MemberToRemove

from bench.processes import (
    REPO,
    Broker,
    Offsets,
    Worker,
    partitions_of,
    read_all,
    wait_until,
    worker_env,
)
from streams import synthetic

#: What an alert event decides (as tests/integration/test_pipeline.py compares it). The texts
#: (summary, evidence, context) may show less of a specimen whose results the worker met in two
#: batches than the replay, which sees the specimen whole; they are counted, not failed.
DECISION = ("alert_id", "rule", "action", "severity", "event_time", "episode_start")


@dataclass
class FaultPlan:
    """What to run. The defaults are the full run of the issue; the test passes a short one."""

    patients: int = 7000
    not_enrolled_fraction: float = 0.2
    rate: float = 400.0
    kills: int = 20
    broker_restarts: int = 5
    rebalance: bool = True
    store: str = "rocksdb://"
    partitions: int = 8
    seed: int = 12
    policy: Path | None = None
    restart_budget_s: float = 5.0
    tick_phase: bool = True


@dataclass
class Restart:
    what: str  # "kill", "broker", "join", "leave"
    seconds: float | None  # to the first committed progress (None: no backlog to show it)


@dataclass
class FaultReport:
    results: int = 0
    records: int = 0
    expected: int = 0
    produced: int = 0
    lost: list[str] = field(default_factory=list)
    spurious: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    redelivered: int = 0
    texts_differ: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    restarts: list[Restart] = field(default_factory=list)
    tick_expected: int = 0
    tick_lost: list[str] = field(default_factory=list)
    tick_spurious: list[str] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.spurious
            or self.duplicates
            or self.out_of_order
            or self.tick_lost
            or self.tick_spurious
        )

    def kill_restarts(self) -> list[float]:
        return [r.seconds for r in self.restarts if r.what == "kill" and r.seconds is not None]

    def lines(self) -> Iterator[str]:
        yield f"records published: {self.records:,} ({self.results:,} lab results)"
        yield f"alert events expected (carwatch replay): {self.expected:,}; rules: " + ", ".join(
            f"{rule} {n}" for rule, n in sorted(self.rules.items())
        )
        yield (
            f"alert events on the topic: {self.produced:,} "
            f"({self.redelivered:,} re-deliveries dropped by event_id; {self.texts_differ:,} "
            "with the same decision in other words than the replay's)"
        )
        yield (
            f"lost {len(self.lost)}, spurious {len(self.spurious)}, surviving duplicates "
            f"{len(self.duplicates)}, patients out of order {len(self.out_of_order)}"
        )
        yield (
            f"tick phase: {self.tick_expected} wall-clock alert events expected, "
            f"lost {len(self.tick_lost)}, spurious {len(self.tick_spurious)}"
        )
        counts = Counter(r.what for r in self.restarts)
        yield "faults: " + ", ".join(f"{what} {n}" for what, n in sorted(counts.items()))
        for what in ("kill", "broker", "join", "leave"):
            times = [r.seconds for r in self.restarts if r.what == what]
            shown = " ".join("-" if t is None else f"{t:.1f}" for t in times)
            if times:
                yield f"  {what}: seconds to first committed progress: {shown}"
        for label, items in (
            ("lost", self.lost),
            ("spurious", self.spurious),
            ("duplicate", self.duplicates),
            ("out of order", self.out_of_order),
            ("tick lost", self.tick_lost),
            ("tick spurious", self.tick_spurious),
        ):
            for item in items[:5]:
                yield f"  {label}: {item}"


# -- the file and its expectation -----------------------------------------------------------


def build_file(plan: FaultPlan, path: Path, now: datetime) -> tuple[int, int]:
    """Write the cohort in publishing order; (records, lab results)."""
    cohort = synthetic.cohort(plan.patients, now, prefix="FLT")
    mixed = synthetic.hospital_feed(cohort, plan.not_enrolled_fraction, now)
    clinical = [r for r in mixed if synthetic.topic_of(r) == "clinical"]
    labs = [r for r in mixed if synthetic.topic_of(r) == "labs"]
    with path.open("w") as out:
        for record in clinical + labs:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return len(mixed), len(labs)


def whole_specimens(lines: list[bytes], size: int) -> int:
    """``size``, moved past the rest of the specimen the slice would cut: a lab sends the results
    of one specimen together (one HL7 message, one Bundle), and the worker applies together only
    what arrives together (docs/clinical-spec.md section 0), as the replay does for the file."""

    def specimen(line: bytes) -> tuple[Any, Any]:
        record = json.loads(line)
        return record.get("patient_id"), record.get("collected_at")

    if size >= len(lines):
        return len(lines)
    last = specimen(lines[size - 1])
    while size < len(lines) and specimen(lines[size]) == last:
        size += 1
    return size


def replay(path: Path, policy: Path | None, now: datetime | None = None) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "streams.cli", "replay", str(path)]
    if policy is not None:
        command += ["--policy", str(policy)]
    if now is not None:
        command += ["--now", now.isoformat()]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=1800, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def compare(
    expected: list[dict[str, Any]], produced: list[dict[str, Any]], report: FaultReport
) -> None:
    """After dropping re-deliveries by ``event_id``: lost (expected, never seen), surviving
    duplicates (another event with an expected event's content), spurious (anything else
    unexpected, or an expected ``event_id`` with other content), per-patient order."""
    seen: dict[str, dict[str, Any]] = {}
    for event in produced:
        if event["event_id"] in seen:
            report.redelivered += 1
        else:
            seen[event["event_id"]] = event
    wanted = {e["event_id"]: e for e in expected}
    report.expected, report.produced = len(expected), len(produced)
    report.rules = Counter(e["rule"] for e in expected)
    report.lost = [describe(e) for i, e in wanted.items() if i not in seen]
    contents = Counter(content(e) for e in expected)
    for event_id, event in seen.items():
        if event_id in wanted:
            if content(event) != content(wanted[event_id]):
                report.spurious.append(f"{describe(event)} differs from the replay's")
        elif contents[content(event)] > 0:
            report.duplicates.append(describe(event))
        else:
            report.spurious.append(describe(event))
    report.texts_differ = sum(
        1
        for event_id, event in seen.items()
        if event_id in wanted and text(event) != text(wanted[event_id])
    )
    mine, theirs = by_patient(list(seen.values())), by_patient(expected)
    report.out_of_order = [
        pid for pid, ids in theirs.items() if [i for i in mine.get(pid, []) if i in wanted] != ids
    ]


def content(event: dict[str, Any]) -> tuple[Any, ...]:
    """What an alert event decides (``DECISION``)."""
    return tuple(event.get(k) for k in DECISION)


def text(event: dict[str, Any]) -> str:
    """An alert event without its wall-clock ``decided_at``."""
    return json.dumps({k: v for k, v in event.items() if k != "decided_at"}, sort_keys=True)


def by_patient(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for event in events:
        grouped[event["patient_id"]].append(event["event_id"])
    return grouped


def describe(event: dict[str, Any]) -> str:
    return f"{event['rule']} {event['action']} {event['severity']} at {event['event_time']}"


# -- the run --------------------------------------------------------------------------------


class FaultRun:
    """One fault run on its own broker (``run`` starts and stops it)."""

    def __init__(self, plan: FaultPlan, port: int, controller_port: int = 0) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="carwatch-faults-"))
        self.broker = Broker(port, self.tmp / "kafka", plan.partitions, controller_port)
        self.name = f"faults-{int(time.time())}"
        self.report = FaultReport(log_dir=self.tmp)
        self.workers: dict[str, Worker] = {}
        self.offsets = Offsets(self.broker.bootstrap)
        self._producer: KafkaProducer | None = None
        self.topics: dict[str, str] = {}
        self._pending: list[bytes] = []
        self.published = 0
        self.slice_seconds = 1.0
        self.began = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f} s] {message}", file=sys.stderr, flush=True)

    # -- processes ------------------------------------------------------------------------

    def start_worker(self, member: str, **extra: str) -> Worker:
        settings = {
            "CARWATCH_STORE": self.plan.store,
            "CARWATCH_DATA_DIR": str(self.tmp / member),
            "CARWATCH_GROUP_INSTANCE_ID": member,
            "CARWATCH_TICK_INTERVAL_SECONDS": "86400",
            "CARWATCH_BROKER_SESSION_TIMEOUT_SECONDS": "10",
        }
        if self.plan.policy is not None:
            settings["CARWATCH_POLICY_FILE"] = str(self.plan.policy)
        env = worker_env(self.broker, self.name, self.topics, **{**settings, **extra})
        worker = Worker(member, env, self.tmp / f"{member}.log").start()
        self.workers[member] = worker
        return worker

    def running(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.expected_exit]

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.broker.bootstrap,
                acks="all",
                # a slice leaves at its flush, one batch per partition: a specimen in it is
                # fetched whole (``whole_specimens``)
                linger_ms=60_000,
                batch_size=1024 * 1024,
                retries=2**31 - 1,
                max_in_flight_requests_per_connection=1,
            )
        return self._producer

    def close_producer(self) -> None:
        if self._producer is not None:
            self._producer.flush(60)
            self._producer.close(10)
            self._producer = None

    # -- offsets --------------------------------------------------------------------------

    def committed_total(self, topics: list[str]) -> int | None:
        found = self.offsets.committed(self.name, partitions_of(topics, self.plan.partitions))
        return None if found is None else sum(found.values())

    def caught_up(self, topics: list[str]) -> bool:
        tps = partitions_of(topics, self.plan.partitions)
        ends = self.offsets.ends(tps)
        committed = self.offsets.committed(self.name, tps)
        return (
            ends is not None
            and committed is not None
            and all(committed[tp] >= ends[tp] for tp in tps)
        )

    def progress_after(self, before: int | None, started: float, topics: list[str]) -> float | None:
        """Seconds from ``started`` to the first committed offset beyond ``before``."""
        if before is None:
            return None

        def moved() -> bool:
            now = self.committed_total(topics)
            return now is not None and now > before

        try:
            wait_until(moved, 120, "committed progress", self.running(), interval=0.1)
        except TimeoutError:
            return None
        return time.monotonic() - started

    # -- faults ---------------------------------------------------------------------------

    def kill(self) -> None:
        inputs = [self.topics["labs"], self.topics["clinical"]]
        victim = self.rng.choice(self.running())
        time.sleep(self.rng.uniform(0, 1.0))  # a random moment of the worker's batch cycle
        before = self.committed_total(inputs)
        victim.kill()
        started = time.monotonic()
        self.workers[victim.name] = Worker(victim.name, victim.env, victim.log).start()
        self.publish_next()  # a backlog for the restarted worker to show progress on
        self.record(Restart("kill", self.progress_after(before, started, inputs)), victim.name)

    def restart_broker(self) -> None:
        inputs = [self.topics["labs"], self.topics["clinical"]]
        self.close_producer()
        self.offsets.close()
        self.broker.down()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.broker.up()
        started = time.monotonic()
        before = wait_until(lambda: self.committed_total(inputs), 60, "the broker's offsets")
        self.publish_next()
        self.record(Restart("broker", self.progress_after(before, started, inputs)), "broker")

    def join(self) -> None:
        inputs = [self.topics["labs"], self.topics["clinical"]]
        before = self.committed_total(inputs)
        started = time.monotonic()
        self.start_worker("w1")
        self.publish_next()
        self.record(Restart("join", self.progress_after(before, started, inputs)), "w1")

    def leave(self) -> None:
        inputs = [self.topics["labs"], self.topics["clinical"]]
        leaving = self.workers["w1"]
        leaving.stop()
        before = self.committed_total(inputs)
        started = time.monotonic()
        admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        try:
            admin.remove_group_members(self.name, [MemberToRemove(group_instance_id="w1")])
        finally:
            admin.close()
        self.publish_next()
        self.record(Restart("leave", self.progress_after(before, started, inputs)), "w1")

    def record(self, restart: Restart, who: str) -> None:
        self.report.restarts.append(restart)
        took = "no progress seen" if restart.seconds is None else f"{restart.seconds:.1f} s"
        self.say(f"{restart.what} ({who}): first committed progress after {took}")

    # -- publishing -----------------------------------------------------------------------

    def publish(self, lines: list[bytes], topic: str) -> None:
        for line in lines:
            key = json.loads(line)["patient_id"].encode()
            self.producer.send(topic, value=line, key=key)
        self.producer.flush(120)

    def publish_next(self, paced: bool = False) -> None:
        """Publish the next slice of labs; ``paced``: then wait as long as the planned rate
        takes for it (after a fault the slice goes out at once: the restart's time to progress
        is measured while the worker has it to drain)."""
        if not self._pending:
            return
        size = whole_specimens(self._pending, max(1, int(self.plan.rate * self.slice_seconds)))
        chunk, self._pending = self._pending[:size], self._pending[size:]
        started = time.monotonic()
        self.publish(chunk, self.topics["labs"])
        self.published += len(chunk)
        if paced:
            time.sleep(max(0.0, started + len(chunk) / self.plan.rate - time.monotonic()))

    # -- the whole run --------------------------------------------------------------------

    def run(self) -> FaultReport:
        plan = self.plan
        now = datetime.now(UTC)
        path = self.tmp / "cohort.ndjson"
        self.report.records, self.report.results = build_file(plan, path, now)
        expected = replay(path, plan.policy)
        lines = path.read_bytes().splitlines()
        clinical = [line for line in lines if b'"lab_result"' not in line]
        self._pending = [line for line in lines if b'"lab_result"' in line]
        self.published = 0
        self.broker.up()
        try:
            self.topics = self.broker.topics(self.name)
            self.drive(clinical)
            produced = [
                json.loads(r.value)
                for r in read_all(self.broker.bootstrap, self.topics["alerts"], plan.partitions)
            ]
            compare(expected, produced, self.report)
            if plan.tick_phase:
                self.tick_phase(path, produced)
        finally:
            for worker in self.workers.values():
                worker.stop()
            self.close_producer()
            self.offsets.close()
            self.broker.down()
        return self.report

    def drive(self, clinical: list[bytes]) -> None:
        plan = self.plan
        inputs = [self.topics["labs"], self.topics["clinical"]]
        self.start_worker("w0")
        self.say(f"publishing {len(clinical):,} clinical records")
        self.publish(clinical, self.topics["clinical"])
        wait_until(
            lambda: self.caught_up([self.topics["clinical"]]),
            300,
            "the clinical records",
            self.running(),
        )
        faults = ["kill"] * plan.kills + ["broker"] * plan.broker_restarts
        self.rng.shuffle(faults)
        if plan.rebalance:
            faults.insert(len(faults) // 3, "join")
            faults.insert(2 * len(faults) // 3, "leave")
        self.say(f"publishing {len(self._pending):,} lab results at {plan.rate:.0f}/s with faults")
        # the labs are published in slices between the faults (and a few without any)
        self.slice_seconds = max(0.2, len(self._pending) / plan.rate / (len(faults) + 2) / 3)
        actions = {
            "kill": self.kill,
            "broker": self.restart_broker,
            "join": self.join,
            "leave": self.leave,
        }
        slots = len(self._pending) / (len(faults) + 1)
        for number, fault in enumerate(faults, start=1):
            # a random moment in the fault's slot, always with labs left to publish after it
            target = slots * (number - 1 + self.rng.uniform(0.2, 0.8))
            while self._pending and self.published < target:
                self.publish_next(paced=True)
                self.check_children()
            actions[fault]()
        while self._pending:
            self.publish_next(paced=True)
            self.check_children()
        self.say("all published; waiting until every input offset is committed")
        wait_until(
            lambda: self.caught_up(inputs),
            900,
            "every input offset committed",
            self.running(),
            interval=1,
        )

    def check_children(self) -> None:
        for worker in self.running():
            worker.check()

    def tick_phase(self, path: Path, produced: list[dict[str, Any]]) -> None:
        """Restart with a short tick; the wall-clock alerts must be those of replay --now."""
        for worker in self.running():
            worker.stop()
        self.say("tick phase")
        started = datetime.now(UTC)
        worker = self.start_worker("w0", CARWATCH_TICK_INTERVAL_SECONDS="2")
        before = {e["event_id"] for e in produced}
        with_now = replay(path, self.plan.policy, started)
        without = {e["event_id"] for e in replay(path, self.plan.policy)}
        wanted = {tick_key(e) for e in with_now if e["event_id"] not in without}
        self.report.tick_expected = len(wanted)

        def ticked() -> set[tuple[str, ...]] | None:
            records = read_all(
                self.broker.bootstrap, self.topics["alerts"], self.plan.partitions, idle=1
            )
            events = [json.loads(r.value) for r in records]
            news = {tick_key(e) for e in events if e["event_id"] not in before}
            return news if len(news) >= len(wanted) else None

        try:
            news = wait_until(ticked, 120, "the tick's alerts", [worker], interval=2)
        except TimeoutError:
            news = set()
        self.report.tick_lost = [" ".join(k) for k in sorted(wanted - news)]
        self.report.tick_spurious = [" ".join(k) for k in sorted(news - wanted)]


def tick_key(event: dict[str, Any]) -> tuple[str, ...]:
    """A wall-clock alert event without the instants that come from the clock."""
    return (
        event["patient_id"],
        event["rule"],
        event["action"],
        event["severity"],
        event["alert_id"],
    )
