"""The long fuzz run of issue 11: at least 10,000 mutated inputs per kind (HL7 v2, FHIR,
NDJSON) through the listeners' own parse path, each under a time bound.

    python -m bench.fuzz [--inputs 12000] [--bound 1.0] [--seed 11]

Each input is a seed — a fixture message, a FHIR document, a scenario file, an entry of the
committed corpus (tests/data/fuzz) — with 1 to 8 random edits: bytes flipped, cut, repeated
(up to 50 times), or separators, escapes, surrogates, brackets and numbers inserted. Counted per
kind: crashes (any exception: must be 0), inputs over the bound (a SIGALRM interrupts them: must
be 0), outcomes and reject reasons, and the time per input (median, 99th percentile, max) next
to a same-run baseline: the unmutated seeds.
"""

import argparse
import io
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from schemas.lab_result import LabResult
from schemas.records import Rejection
from streams.core.policy import Policy
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.files import read_items
from streams.ingest.hl7.oru import Hl7Config
from streams.listeners.jobs import fhir_job, hl7_job
from streams.listeners.plans import Plan

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
HL7 = Hl7Config(assigning_authority="KIDS")
POLICY = Policy()
INSERTS = (
    b"\\", b"^", b"~", b"|", b"&", b"\r", b"\n", b"\x0b", b"\x1c", b"\xed\xa0\x80", b"\xff",
    b'"', b"{", b"[", b"]", b"}", b"\\ud800", b"<", b">", b"1e999", b"NaN", b"-", b"\x00",
    b"\\X41\\", b"\\.sp99\\",
)  # fmt: skip


class OverBound(Exception):
    """Raised by SIGALRM in an input that ran past the bound."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise OverBound


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        at = rng.randrange(len(out))
        action = rng.choice(("flip", "cut", "copy", "insert"))
        if action == "flip":
            out[at] = rng.randrange(256)
        elif action == "cut":
            del out[at : at + rng.randint(1, 64)]
        elif action == "copy":
            out[at:at] = out[at : at + rng.randint(1, 64)] * rng.randint(1, 50)
        else:
            out[at:at] = rng.choice(INSERTS)
    return bytes(out)


def tally_plan(plan: Plan, found: Counter[str]) -> None:
    found["accepted"] += len(plan.results)
    found["unmapped"] += plan.unmapped
    for reason, count in plan.reasons.items():
        found[f"rejected:{reason}"] += count


def run_hl7(raw: bytes, found: Counter[str]) -> None:
    outcome = hl7_job(raw, HL7, POLICY, "mllp", NOW, "fuzz")
    found[f"ack:{outcome.decision.code}"] += 1
    tally_plan(outcome.plan, found)


def run_fhir(raw: bytes, found: Counter[str]) -> None:
    xml = raw.lstrip().startswith(b"<")
    outcome = fhir_job(raw, xml, "json", "bundle", "/fhir", FhirConfig(), POLICY, "fhir", NOW, "f")
    found[f"http:{outcome.status}"] += 1
    if outcome.status >= 500:
        raise AssertionError(f"answered {outcome.status}")
    tally_plan(outcome.plan, found)


def run_ndjson(raw: bytes, found: Counter[str]) -> None:
    for item in read_items(io.BytesIO(raw), "ndjson", "fuzz", POLICY, HL7):
        outcome = item.outcome
        if isinstance(outcome, Rejection):
            found[f"rejected:{outcome.reason.value}"] += 1
            letter = item.dead_letter("replay")
            assert letter is not None
            letter.model_dump_json().encode("utf-8")
        else:
            found["accepted" if isinstance(outcome, LabResult) else "other"] += 1


def seeds(kind: str) -> list[bytes]:
    if kind == "ndjson":
        files = [p for p in (DATA / "scenarios").glob("*.ndjson") if ".expected." not in p.name]
    else:
        files = list((DATA / kind).iterdir())
    files += list((DATA / "fuzz" / kind).iterdir())
    return [p.read_bytes() for p in sorted(files)]


def timed(
    run: Callable[[bytes, Counter[str]], None], raw: bytes, found: Counter[str], bound: float
) -> float:
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, bound)
    try:
        run(raw, found)
    except OverBound:
        found["OVER BOUND"] += 1
    except Exception as exc:  # the point of the run: count, never stop
        found[f"CRASH {type(exc).__name__}"] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=12_000, help="mutated inputs per kind")
    parser.add_argument("--bound", type=float, default=1.0, help="seconds allowed per input")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    runners = {"hl7": run_hl7, "fhir": run_fhir, "ndjson": run_ndjson}
    failed = False
    for kind, run in runners.items():
        seed_list = seeds(kind)
        baseline = [timed(run, raw, Counter(), args.bound) for raw in seed_list]
        found: Counter[str] = Counter()
        times = []
        started = time.perf_counter()
        for _ in range(args.inputs):
            times.append(timed(run, mutate(rng.choice(seed_list), rng), found, args.bound))
        elapsed = time.perf_counter() - started
        times.sort()
        crashes = sum(n for k, n in found.items() if k.startswith("CRASH"))
        over = found["OVER BOUND"]
        failed |= bool(crashes or over)
        top = ", ".join(f"{k}={n}" for k, n in found.most_common(8))
        print(
            f"{kind:>6}: {args.inputs:,} inputs from {len(seed_list)} seeds in {elapsed:.1f} s; "
            f"crashes {crashes}, over {args.bound:g} s {over}; per input median "
            f"{ms(statistics.median(times))}, p99 {ms(times[int(len(times) * 0.99)])}, max "
            f"{ms(times[-1])} (baseline, unmutated seeds: median "
            f"{ms(statistics.median(baseline))}, max {ms(max(baseline))})"
        )
        print(f"        outcomes: {top}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
