"""Benchmark the pure engine on one core, against a same-run parse-and-validate baseline.

    python -m bench.engine --patients 10000

Figures: (1) baseline -- the same records only decoded and validated (``decode_record`` +
``normalise_lab_result``), no rules; (2) engine -- ``apply_all`` over the already-validated records, each run of
consecutive records of one patient at a time as the worker and replay apply them (one specimen's
results together);
(3) end to end -- both. Then peak RSS, the serialized state per patient (the Faust table's
codec) and the codec's cost per state. Targets (issue #2): engine ≥ 100,000 results/s, ≤ 8 KB of state per patient after a year.
"""

import argparse
import gc
import resource
import statistics
import time
from itertools import groupby

from bench.engine.cohort import cohort
from schemas.lab_result import LabResult
from schemas.records import Rejection, decode_record
from streams.core.engine import apply_all
from streams.core.policy import DEFAULT_POLICY
from streams.core.state import PatientState
from streams.ingest.normalise import Unmapped, normalise_lab_result
from streams.pipeline.state_codec import decode_state, encode_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    args = parser.parse_args()
    policy = DEFAULT_POLICY

    lines = list(cohort(args.patients))
    # The inputs are held for the whole run (a worker's are short-lived): keep the collector from
    # re-scanning millions of long-lived objects in every generation-2 pass.
    gc.freeze()
    results = sum(1 for line in lines if b'"lab_result"' in line)
    print(
        f"cohort: {args.patients:,} patients x 1 year, {len(lines):,} records ({results:,} lab results)"
    )

    gc.collect()
    started = time.perf_counter()
    records = []
    for line in lines:
        record = decode_record(line)
        if isinstance(record, LabResult):
            record = normalise_lab_result(record, policy)
        assert not isinstance(record, (Rejection, Unmapped)), record
        records.append(record)
    parse_s = time.perf_counter() - started

    gc.collect()
    gc.freeze()
    states: dict[str, PatientState] = {}
    alerts = 0
    started = time.perf_counter()
    for patient_id, group in groupby(records, key=lambda record: record.patient_id):
        state = states.get(patient_id)
        if state is None:
            state = states[patient_id] = PatientState.new(patient_id)
        alerts += sum(len(result.alerts) for result in apply_all(state, list(group), policy))
    engine_s = time.perf_counter() - started

    kept = list(states.values())
    started = time.perf_counter()
    blobs = [encode_state(state) for state in kept]
    first_encode_s = time.perf_counter() - started
    started = time.perf_counter()
    for state in kept:
        encode_state(state)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    for blob in blobs:
        decode_state(blob)
    decode_s = time.perf_counter() - started
    sizes = [len(blob) for blob in blobs]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(records)
    print(f"{'stage':<44}{'records/s':>14}{'seconds':>10}")
    print(f"{'baseline: decode + validate + normalise':<44}{n / parse_s:>14,.0f}{parse_s:>10.2f}")
    print(f"{'engine: apply (rules, state, lifecycle)':<44}{n / engine_s:>14,.0f}{engine_s:>10.2f}")
    print(f"{'end to end: both':<44}{n / (parse_s + engine_s):>14,.0f}{parse_s + engine_s:>10.2f}")
    print(f"engine / baseline throughput ratio: {parse_s / engine_s:.2f}")
    print(f"alert events: {alerts:,}")
    print(f"peak RSS: {peak_rss_mb:,.0f} MiB")
    print(
        f"serialized state per patient after a year: mean {statistics.mean(sizes):,.0f} B, "
        f"p99 {sorted(sizes)[int(len(sizes) * 0.99)]:,} B, max {max(sizes):,} B"
    )
    per_state = 1e6 / len(kept)
    print(
        f"state codec per patient-year: first encode {first_encode_s * per_state:,.0f} us, "
        f"encode again (texts kept) {encode_s * per_state:,.0f} us, "
        f"decode {decode_s * per_state:,.0f} us"
    )
    print("targets: engine >= 100,000 results/s; state <= 8,192 B per patient")


if __name__ == "__main__":
    main()
