"""Fuzzing the three input kinds (issue 11): the committed corpus of the nastiest inputs
(tests/data/fuzz/, with the cases that crashed or stalled the first release) and hypothesis
mutations of the fixture messages. Every input must end as values — results, rejections with a
machine-readable reason, unmapped — never an exception; every dead letter must be writable as
UTF-8 JSON; every answer a 2xx/4xx or AA/AE/AR, never 5xx; and none may take a second.

The longer run (10,000+ inputs per kind) is ``python -m bench.fuzz``.
"""

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import Policy
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.files import read_items
from streams.ingest.hl7.oru import Hl7Config
from streams.ingest.normalise import Unmapped
from streams.listeners.jobs import fhir_job, hl7_job
from streams.listeners.plans import Plan
from tests.strategies import mutated

DATA = Path(__file__).resolve().parents[2] / "data"
FUZZ = DATA / "fuzz"
#: issue 11 acceptance: no input may hang over a second
BOUND_S = 1.0
NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
HL7 = Hl7Config(assigning_authority="KIDS")


def corpus(kind: str) -> list[Path]:
    return sorted((FUZZ / kind).iterdir())


def check_plan(plan: Plan) -> None:
    for _, value in plan.dead_letters:
        letter = DeadLetter.model_validate_json(value)
        assert letter.reason in RejectReason
        letter.raw.encode("utf-8")
    for key, value in plan.results:
        assert key is not None
        LabResult.model_validate_json(value)


def run_hl7(raw: bytes) -> None:
    outcome = hl7_job(raw, HL7, Policy(), "mllp", NOW, "fuzz")
    assert outcome.decision.code in ("AA", "AE", "AR")
    check_plan(outcome.plan)
    for item in read_items(io.BytesIO(raw), "hl7", "fuzz.hl7", Policy(), HL7):
        assert isinstance(item.outcome, LabResult | Rejection | Unmapped)


def run_fhir(raw: bytes, xml: bool = False) -> None:
    for endpoint in ("observation", "bundle"):
        outcome = fhir_job(
            raw, xml, "json", endpoint, "/fhir", FhirConfig(), Policy(), "fhir", NOW, "fuzz"
        )
        assert outcome.status in (200, 201, 400, 422), outcome.status
        check_plan(outcome.plan)


def run_ndjson(raw: bytes) -> None:
    for item in read_items(io.BytesIO(raw), "ndjson", "fuzz.ndjson", Policy(), HL7):
        outcome = item.outcome
        if isinstance(outcome, Rejection):
            assert outcome.reason in RejectReason
            assert outcome.patient_id is None or outcome.patient_id.encode()
            letter = item.dead_letter("replay")
            assert letter is not None
            letter.model_dump_json().encode("utf-8")


RUNNERS = {"hl7": run_hl7, "fhir": run_fhir, "ndjson": run_ndjson}


@pytest.mark.parametrize(
    "path", [p for kind in RUNNERS for p in corpus(kind)], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_corpus_input_is_handled_within_a_second(path: Path) -> None:
    raw = path.read_bytes()
    started = time.perf_counter()
    if path.suffix == ".xml":
        run_fhir(raw, xml=True)
    else:
        RUNNERS[path.parent.name](raw)
    assert time.perf_counter() - started < BOUND_S * (2 if path.parent.name == "fhir" else 1)


def test_the_issue_cases_are_in_the_corpus() -> None:
    ndjson = b"".join(p.read_bytes() for p in corpus("ndjson"))
    fhir = {p.name: p.read_bytes() for p in corpus("fhir")}
    assert b'{"type":["lab_result"]}' in ndjson
    assert b'"\\ud800"' in ndjson and b"\\ud800" in fhir["lone_surrogate.json"]
    assert b"[" * 10_000 in ndjson
    assert len(fhir["one_megabyte_subject_reference.json"]) > 1_000_000
    hl7 = (FUZZ / "hl7" / "forty_thousand_components.hl7").read_bytes()
    assert b"^" * 40_000 in hl7


def seeds(kind: str) -> list[bytes]:
    """The fixture messages, and the clean-room cases of the kind under 16 KB."""
    folder = {"hl7": DATA / "hl7", "fhir": DATA / "fhir"}[kind]
    cleanroom = DATA / "feeds_cleanroom" / kind
    found = sorted(folder.iterdir()) + sorted(
        p
        for p in cleanroom.iterdir()
        if p.suffix in (".hl7", ".json")
        and not p.name.endswith(".expected.json")
        and p.stat().st_size < 16_384
    )
    return [p.read_bytes() for p in found]


FUZZ_SETTINGS = settings(
    max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ_SETTINGS
@given(mutated(seeds("hl7")))
def test_mutated_hl7_never_raises(raw: bytes) -> None:
    run_hl7(raw)


@FUZZ_SETTINGS
@given(mutated(seeds("fhir")))
def test_mutated_fhir_never_raises(raw: bytes) -> None:
    run_fhir(raw)


NDJSON_SEEDS = [
    p.read_bytes()
    for p in sorted((DATA / "scenarios").glob("*.ndjson"))
    if ".expected." not in p.name
][:3]


@FUZZ_SETTINGS
@given(mutated(NDJSON_SEEDS))
def test_mutated_ndjson_never_raises(raw: bytes) -> None:
    run_ndjson(raw)
