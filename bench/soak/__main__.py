"""The soak (issue 12): drain a 1,000,000-result backlog five times in a row, with chunked
delivery on (the default) and off, and fail loudly when the committed offset stops moving.

    python -m bench.soak                          # full: 5 x 1,000,000 results per mode
    python -m bench.soak --results 100000 --runs 2   # a short look

Per mode, one worker (default settings but its own topics, app id and ports) stays up for all
runs. Each run publishes a new cohort of year-long patients (``bench.engine.cohort``): their
``infusion`` records first, waited for until committed, then every lab result at once -- the
backlog. The run ends when every input offset is committed. If the group's committed offset on
the inputs does not move for ``--stall`` seconds (30) while records wait, the soak stops and
prints the group's assignment, the committed offset and lag of every input partition, and the
worker's last log lines (which include the worker's own stall report: paused, buffer-full and
active partitions, flow state). Exit status 1 on a stall or a dead worker.
"""

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

from kafka.admin import KafkaAdminClient

from bench.engine.cohort import cohort
from bench.processes import (
    Broker,
    ChildDied,
    Offsets,
    Worker,
    partitions_of,
    produce,
    tail,
    wait_until,
    worker_env,
)

PATIENT_ID = re.compile(rb'"patient_id":\s*"([^"]*)"')
RESULTS_PER_PATIENT = 120  # about a year of labs (bench/engine/cohort.py)


class Stalled(RuntimeError):
    pass


def publish(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    keyed = ((PATIENT_ID.search(line).group(1), line) for line in lines)  # type: ignore[union-attr]
    asyncio.run(produce(bootstrap, topic, keyed))


def cohort_lines(run: int, results: int) -> tuple[list[bytes], list[bytes]]:
    """(infusions, lab results) of a new cohort for ``run`` (its own patient ids)."""
    patients = max(1, results // RESULTS_PER_PATIENT)
    prefix = f'"SOAK{run}-'.encode()
    lines = [line.replace(b'"BENCH', prefix) for line in cohort(patients, seed=run)]
    infusions = [line for line in lines if b'"infusion"' in line]
    labs = [line for line in lines if b'"lab_result"' in line][:results]
    return infusions, labs


class Soak:
    def __init__(self, broker: Broker, mode: str, chunked: bool, stall: float) -> None:
        self.broker = broker
        self.name = f"soak-{mode}-{int(time.time())}"
        self.topics = broker.topics(self.name)
        self.inputs = partitions_of(
            [self.topics["labs"], self.topics["clinical"]], broker.partitions
        )
        self.offsets = Offsets(broker.bootstrap)
        self.stall = stall
        env = worker_env(
            broker,
            self.name,
            self.topics,
            CARWATCH_CHUNKED_DELIVERY=str(chunked).lower(),
            CARWATCH_DATA_DIR=str(broker.state.parent / self.name),
        )
        self.worker = Worker(self.name, env, broker.state.parent / f"{self.name}.log").start()
        wait_until(lambda: bool(self.worker.metrics()), 120, "the worker", [self.worker])

    def drain(self, run: int, results: int) -> float:
        infusions, labs = cohort_lines(run, results)
        publish(self.broker.bootstrap, self.topics["clinical"], infusions)
        self.wait_drained(time.monotonic())
        publish(self.broker.bootstrap, self.topics["labs"], labs)
        started = time.monotonic()
        self.wait_drained(started)
        return len(labs) / (time.monotonic() - started)

    def wait_drained(self, started: float) -> None:
        moved_at, last = time.monotonic(), -1
        while True:
            self.worker.check()
            ends = self.offsets.ends(self.inputs)
            committed = self.offsets.committed(self.name, self.inputs)
            if ends is None or committed is None:
                time.sleep(1)
                continue
            if all(committed[tp] >= ends[tp] for tp in self.inputs):
                return
            total = sum(committed.values())
            if total != last:
                moved_at, last = time.monotonic(), total
            elif time.monotonic() - moved_at > self.stall:
                raise Stalled(self.report(ends, committed, time.monotonic() - started))
            time.sleep(1)

    def report(self, ends: dict, committed: dict, elapsed: float) -> str:
        lines = [
            f"STALL: committed offset of {self.name} has not moved for {self.stall:.0f} s "
            f"({elapsed:.0f} s into the drain)"
        ]
        admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        try:
            for group in admin.describe_groups([self.name]):
                lines.append(f"group state {group.state}, {len(group.members)} member(s)")
                for member in group.members:
                    assignment = getattr(member, "member_assignment", None)
                    lines.append(f"  member {member.member_id}: {assignment}")
        except Exception as exc:  # the report must print whatever it can
            lines.append(f"  (group description failed: {exc!r})")
        finally:
            admin.close()
        for tp in self.inputs:
            lag = ends[tp] - committed[tp]
            lines.append(
                f"  {tp.topic}[{tp.partition}] committed {committed[tp]} end {ends[tp]} lag {lag}"
            )
        lines.append(f"worker log ({self.worker.log}):\n{tail(self.worker.log, 40)}")
        return "\n".join(lines)

    def close(self) -> None:
        self.worker.stop()
        self.offsets.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=39292, help="broker port (controller +1)")
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stall", type=float, default=30.0)
    parser.add_argument("--modes", default="chunked,unchunked")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="carwatch-soak-"))
    broker = Broker(args.port, tmp / "kafka")
    print(f"soak: {args.runs} x {args.results:,} results per mode; logs in {tmp}", flush=True)
    broker.up()
    try:
        for mode in args.modes.split(","):
            soak = Soak(broker, mode, mode == "chunked", args.stall)
            try:
                for run in range(1, args.runs + 1):
                    rate = soak.drain(run, args.results)
                    print(
                        f"{mode} run {run}: {args.results:,} results drained at {rate:,.0f}/s",
                        flush=True,
                    )
            finally:
                soak.close()
    except (Stalled, ChildDied, TimeoutError) as exc:
        print(f"soak: FAIL\n{exc}", file=sys.stderr)
        return 1
    finally:
        broker.down()
    print("soak: PASS (no stall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
