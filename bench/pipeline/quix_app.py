"""The peer of the worker in ``bench.pipeline``: a Quix Streams 3.x application running the
project's own decode, normalise and engine step, with the patient state in Quix's RocksDB store.

It is what a Python user would write instead of the Faust worker: one record at a time, the
patient's state read from and written to the keyed state store (``state.get_bytes`` /
``set_bytes``, changelogged by Quix), alert events produced to the alerts topic. It runs in a
virtualenv of its own (``bench.pipeline`` creates it: quixstreams pins confluent-kafka < 2.13),
drains ``--expect`` records and prints one JSON line: records, seconds from the first record.
"""

import argparse
import json
import time
from typing import Any

from quixstreams import Application, State

from schemas.clinical import Infusion
from schemas.lab_result import LabResult
from schemas.records import Rejection, decode_record
from streams.core.engine import apply_all
from streams.core.policy import DEFAULT_POLICY
from streams.core.state import PatientState
from streams.ingest.normalise import Unmapped, normalise_lab_result
from streams.pipeline.store import pack, unpack

STATE_KEY = "patient"


def step(value: bytes, key: Any, timestamp: int, headers: Any, state: State) -> list[bytes]:
    """One record: the same decode, normalise and ``apply_all`` as ``Monitor.process``."""
    event: Any = decode_record(value)
    if isinstance(event, LabResult):
        event = normalise_lab_result(event, DEFAULT_POLICY)
    if isinstance(event, Rejection | Unmapped):
        return []
    stored = state.get_bytes(STATE_KEY)
    if stored is None and not isinstance(event, Infusion):
        return []  # not enrolled: nothing stored
    patient = unpack(stored) if stored is not None else PatientState.new(event.patient_id)
    (result,) = apply_all(patient, [event], DEFAULT_POLICY)
    if patient.enrollment is not None:
        state.set_bytes(STATE_KEY, pack(patient))
    return [alert.model_dump_json().encode() for alert in result.alerts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--alerts", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    seen = {"n": 0, "first": 0.0}
    app: Application

    def processed(topic: str, partition: int, offset: int) -> None:
        if not seen["n"]:
            seen["first"] = time.perf_counter()
        seen["n"] += 1
        if seen["n"] >= args.expect:
            app.stop()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        processing_guarantee="at-least-once",
        on_message_processed=processed,
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    alerts = app.topic(args.alerts, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(source)
    sdf = sdf.apply(step, stateful=True, metadata=True, expand=True)
    sdf.to_topic(alerts)
    app.run()
    elapsed = time.perf_counter() - seen["first"]
    print(json.dumps({"records": seen["n"], "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    main()
