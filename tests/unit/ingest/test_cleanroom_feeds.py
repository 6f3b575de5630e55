"""The clean-room inbound feed set (tests/data/feeds_cleanroom, see its INDEX.md) as a test.

127 HL7 v2 / FHIR R4 cases written by an engineer who never saw this code. Each runs through the
listeners' own parse path (``streams.listeners.jobs``: the parse, then the Kafka plan that the
MLLP listener and the FHIR gateway publish), with the site configuration beside the cases
(``hl7-feed.toml``, ``fhir-feed.toml``: the local MRD codes) and the case's feed zone set the
product's way: HL7 ``default_timezone`` in the feed configuration, FHIR the policy's
``timezone`` (docs/feeds.md sections 1 and 2). The outcome is compared as INDEX.md "How to
compare" says. Where the product deliberately differs, ``overrides.json`` (explained in
DIFFERENCES.md) states our documented outcome, which is checked instead, and the clean-room
expectation must still fail, so an override the product has outgrown is noticed.
"""

import copy
import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.lab_result import LabResult
from schemas.records import Rejection
from streams.core.policy import Policy
from streams.ingest.config import feed_config_from, load_feed_toml
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config, parse_oru
from streams.ingest.normalise import ResultItem
from streams.listeners.jobs import parse_fhir_body, plan_fhir, plan_hl7, read_fhir_body
from streams.listeners.plans import Plan

CLEANROOM = Path(__file__).resolve().parents[2] / "data" / "feeds_cleanroom"
CASES = sorted(
    path.relative_to(CLEANROOM).as_posix()
    for path in CLEANROOM.glob("*/*")
    if not path.name.endswith(".expected.json")
)
OVERRIDES: dict[str, dict[str, Any]] = {
    case: override
    for case, override in json.loads((CLEANROOM / "overrides.json").read_text()).items()
    if not case.startswith("_")
}
#: sha256 over every case and expectation file (path, NUL, bytes, NUL; sorted), computed on the
#: set as delivered: the copy is byte for byte (CR segment ends, Latin-1, invalid UTF-8).
DELIVERED_SHA256 = "41fd0db2e672a667ad7eeaffac3d586fe65e4ab03f339408b2cf418953741728"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ACCEPTED_KEYS = ("analyte", "comparator", "status", "accession")
EXTRA_KEYS = ("patient_id", "detected", "method")


def expected_of(case: str) -> dict[str, Any]:
    stem = case.rsplit(".", 1)[0]
    document: dict[str, Any] = json.loads((CLEANROOM / f"{stem}.expected.json").read_text())
    return document


def with_override(expected: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The expectation with our documented outcome in place (format: overrides.json ``_about``)."""
    patched = copy.deepcopy(expected)
    for key in ("message_level", "reason"):
        if key in override:
            patched[key] = override[key]
    if "all_results" in override:
        patched["results"] = override["all_results"]
    for index, patch in override.get("results", {}).items():
        entry = patched["results"][int(index)]
        patched["results"][int(index)] = patch if "outcome" in patch else {**entry, **patch}
    return patched


# --- the product's parse path ---------------------------------------------------------------------


def run_hl7(payload: bytes, zone: str) -> tuple[Rejection | None, list[ResultItem], Plan]:
    path = str(CLEANROOM / "hl7-feed.toml")
    data = {**load_feed_toml(path), "default_timezone": zone}
    message = parse_oru(payload, feed_config_from(data, Hl7Config, path), Policy())
    plan = plan_hl7(message, payload, source="cleanroom", received_at=NOW, inbound=None)
    return message.message_rejection, message.items, plan


def run_fhir(body: bytes, xml: bool, zone: str) -> tuple[Rejection | None, list[ResultItem], Plan]:
    """As the gateway: a Bundle is posted to ``/fhir``, anything else to ``/fhir/Observation``."""
    path = str(CLEANROOM / "fhir-feed.toml")
    config = feed_config_from(load_feed_toml(path), FhirConfig, path)
    peek = read_fhir_body(body, xml)
    bundle = isinstance(peek, dict) and peek.get("resourceType") == "Bundle"
    route = "/fhir" if bundle else "/fhir/Observation"
    endpoint = "bundle" if bundle else "observation"
    _, parsed, _ = parse_fhir_body(body, xml, endpoint, route, config, Policy(timezone=zone))
    plan = plan_fhir(parsed, body, source="cleanroom", path=route, received_at=NOW, inbound=None)
    return parsed.document_rejection, parsed.items, plan


def outcome_of(case: str) -> dict[str, Any]:
    """Our outcome in the clean-room's terms; the Kafka plan must publish exactly it."""
    raw = (CLEANROOM / case).read_bytes()
    zone = expected_of(case)["feed_timezone"]
    if case.endswith(".hl7"):
        rejection, items, plan = run_hl7(raw, zone)
    else:
        rejection, items, plan = run_fhir(raw, case.endswith(".xml"), zone)
    if rejection is not None:
        assert (plan.rejected, plan.results, items) == (1, [], [])
        return {"message_level": "rejected", "reason": rejection.reason.value, "results": []}
    results = [result_of(item) for item in items]
    published = [json.loads(value) for _, value in plan.results]
    assert published == [r["wire"] for r in results if r["outcome"] == "accepted"]
    reasons = sorted(r["reason"] for r in results if r["outcome"] == "rejected")
    assert sorted(plan.reasons.elements()) == reasons
    assert plan.unmapped == sum(r["outcome"] == "unmapped" for r in results)
    return {"message_level": "accepted", "results": results}


def result_of(item: ResultItem) -> dict[str, Any]:
    outcome = item.outcome
    if isinstance(outcome, LabResult):
        wire = json.loads(outcome.model_dump_json())
        return {"outcome": "accepted", "wire": wire, **wire}
    if isinstance(outcome, Rejection):
        return {"outcome": "rejected", "reason": outcome.reason.value}
    return {"outcome": "unmapped", "code": outcome.code}


# --- comparing ("How to compare" in INDEX.md) -----------------------------------------------------


def same_number(expected: float | None, ours: float | None) -> bool:
    if expected is None or ours is None:
        return expected is ours
    return math.isclose(expected, ours, rel_tol=1e-9)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def differences(expected: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Every normative disagreement, as text; empty when the outcomes agree."""
    level = (expected["message_level"], expected.get("reason"))
    if level != (ours["message_level"], ours.get("reason")):
        return [f"message {level} != ours {(ours['message_level'], ours.get('reason'))}"]
    wanted, got = expected["results"], ours["results"]
    found = [f"{len(wanted)} results expected, {len(got)} ours"] if len(wanted) != len(got) else []
    for index, (want, have) in enumerate(zip(wanted, got, strict=False)):
        found += [f"result {index}: {text}" for text in result_differences(want, have)]
    return found


def result_differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    if want["outcome"] != have["outcome"]:
        return [f"{want['outcome']} {want.get('reason', '')} != ours {have['outcome']}"]
    if want["outcome"] == "rejected":
        return [] if want["reason"] == have["reason"] else [f"{want['reason']} != {have['reason']}"]
    if want["outcome"] == "unmapped":
        return []
    found = [
        f"{key} {want[key]!r} != {have.get(key)!r}"
        for key in (*ACCEPTED_KEYS, *EXTRA_KEYS)
        if key in want and want[key] != have.get(key)
    ]
    for key in ("value", "sensitivity"):
        if key in want and not same_number(want[key], have.get(key)):
            found.append(f"{key} {want[key]!r} != {have.get(key)!r}")
    if instant(want["collected_at"]) != instant(have["collected_at"]):
        found.append(f"collected_at {want['collected_at']} != {have['collected_at']}")
    return found


# --- the tests ------------------------------------------------------------------------------------


def test_the_set_is_complete_and_byte_for_byte() -> None:
    assert len(CASES) == 127
    digest = hashlib.sha256()
    for path in sorted(p for p in CLEANROOM.glob("*/*")):
        digest.update(path.relative_to(CLEANROOM).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    assert digest.hexdigest() == DELIVERED_SHA256


def test_every_override_names_a_case_documented_in_differences_md() -> None:
    differences_md = (CLEANROOM / "DIFFERENCES.md").read_text(encoding="utf-8")
    for case in OVERRIDES:
        assert case in CASES
        assert f"`{case}`" in differences_md, case


@pytest.mark.parametrize("case", CASES)
def test_cleanroom_case(case: str) -> None:
    expected = expected_of(case)
    ours = outcome_of(case)
    override = OVERRIDES.get(case)
    if override is None:
        assert differences(expected, ours) == []
        return
    assert differences(with_override(expected, override), ours) == []
    assert differences(expected, ours), f"{case}: the product now agrees; remove its override"
