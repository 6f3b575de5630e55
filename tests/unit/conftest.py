"""Shared fixtures of the ingest and listener tests: data paths, feed configs, outcome helpers."""

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Analyte, MrdMethod
from streams.core.policy import Policy
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config
from streams.ingest.normalise import Unmapped

DATA = Path(__file__).resolve().parents[1] / "data"
LOCAL_CODES = {"MRD-FLOW": Analyte.MRD, "MRD-NGS": Analyte.MRD, "MRD-PCR": Analyte.MRD}
MRD_METHODS = {"MRD-NGS": MrdMethod.NGS}


def kind(outcome: Any) -> str:
    """``accepted`` / ``rejected:<reason>`` / ``unmapped`` for compact assertions."""
    if isinstance(outcome, Rejection):
        return f"rejected:{outcome.reason.value}"
    if isinstance(outcome, Unmapped):
        return "unmapped"
    return "accepted"


def tally(outcomes: Iterable[Any]) -> Counter[str]:
    return Counter(kind(outcome) for outcome in outcomes)


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def policy() -> Policy:
    return Policy()


@pytest.fixture
def hl7_config() -> Hl7Config:
    """The config of the synthetic KIDS-LAB feed (tests/data/hl7)."""
    return Hl7Config(assigning_authority="KIDS", local_codes=LOCAL_CODES, mrd_methods=MRD_METHODS)


@pytest.fixture
def fhir_config() -> FhirConfig:
    return FhirConfig(local_codes=LOCAL_CODES, mrd_methods=MRD_METHODS)


@pytest.fixture
def kinds() -> Callable[[Iterable[Any]], list[str]]:
    return lambda outcomes: [kind(outcome) for outcome in outcomes]


@pytest.fixture
def accepted() -> Callable[[Iterable[Any]], list[LabResult]]:
    return lambda outcomes: [o for o in outcomes if isinstance(o, LabResult)]
