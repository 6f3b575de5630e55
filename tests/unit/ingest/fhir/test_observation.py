"""FHIR R4 Observation / Bundle parsing (streams/ingest/fhir/observation.py)."""

import copy
import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import Analyte, Comparator, MrdMethod, RejectReason, ResultStatus
from streams.core.policy import Policy
from streams.ingest.fhir.observation import PARSER_BUG, FhirConfig, FhirParse, parse_fhir
from streams.ingest.hl7.oru import Hl7Config, parse_oru
from streams.ingest.normalise import Unmapped

Kinds = Callable[[Iterable[Any]], list[str]]
CET = timezone(timedelta(hours=1))


def observation(**fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "identifier": [{"value": "ACC-1"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "subject": {"reference": "Patient/P001"},
        "effectiveDateTime": "2026-01-05T08:00:00+01:00",
        "issued": "2026-01-05T12:00:00Z",
        "valueQuantity": {"value": 0.42, "system": "http://unitsofmeasure.org", "code": "10*9/L"},
    }
    resource.update(fields)
    return {key: value for key, value in resource.items() if value is not None}


def bundle(*resources: dict[str, Any], kind: str = "collection") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


def only(parsed: FhirParse) -> Any:
    assert parsed.document_rejection is None, parsed.document_rejection
    assert len(parsed.items) == 1, parsed.items
    return parsed.items[0].outcome


def outcomes(parsed: FhirParse) -> list[Any]:
    assert parsed.document_rejection is None, parsed.document_rejection
    return [item.outcome for item in parsed.items]


def load(data_dir: Path, name: str) -> bytes:
    return (data_dir / "fhir" / name).read_bytes()


# --- fixtures -----------------------------------------------------------------------------------


def test_single_observation(data_dir: Path) -> None:
    parsed = parse_fhir(load(data_dir, "observation_igg.json"))
    result = only(parsed)
    assert parsed.items[0].location == "Observation"
    assert isinstance(result, LabResult)
    assert (result.analyte, result.value, result.unit) == (Analyte.IGG, 380, "mg/dL")
    assert result.status is ResultStatus.CORRECTED
    assert result.collected_at == datetime(2026, 2, 1, 8, 30, tzinfo=UTC)  # effectivePeriod.start
    assert result.resulted_at == datetime(2026, 2, 1, 14, 0, 0, 250000, tzinfo=UTC)
    assert (result.accession, result.source, result.patient_id) == (
        "LAB-0060",
        "KIDS-LAB",
        "CART-0001",
    )


def test_every_status(data_dir: Path, kinds: Kinds) -> None:
    parsed = parse_fhir(load(data_dir, "statuses.json"))
    results = outcomes(parsed)
    # registered, preliminary, final, amended, corrected, cancelled, entered-in-error, unknown;
    # the OperationOutcome entry of the searchset is ignored, not counted
    assert kinds(results) == [
        "unmapped",
        *["accepted"] * 6,
        "rejected:invalid_field",
    ]
    S = ResultStatus
    assert [r.status for r in results[1:7]] == [
        S.PRELIMINARY,
        S.FINAL,
        S.CORRECTED,
        S.CORRECTED,
        S.CANCELLED,
        S.CANCELLED,
    ]
    assert [r.value for r in results[1:7]] == [430, 440, 450, 460, None, None]
    assert {r.patient_id for r in results[1:7]} == {"CART-0001"}  # absolute, with _history
    assert [item.location for item in parsed.items] == [f"entry {i}" for i in range(8)]


def test_mrd_forms(data_dir: Path, fhir_config: FhirConfig, kinds: Kinds) -> None:
    parsed = parse_fhir(load(data_dir, "mrd_forms.json"), fhir_config)
    results = outcomes(parsed)
    assert kinds(results) == [
        *["accepted"] * 7,
        "accepted",  # comparator: censored, kept
        "rejected:invalid_field",  # "see comment"
        "accepted",  # CD19 % component
        "accepted",  # CD19 abs component (the CD3 component is not ours)
    ]
    found = [(r.value, r.detected, r.sensitivity, r.method) for r in results[:7]]
    assert found == [
        (pytest.approx(2e-4), True, None, MrdMethod.FLOW),
        (pytest.approx(1.5e-4), True, None, MrdMethod.NGS),
        (None, True, None, MrdMethod.FLOW),  # method from a SNOMED display
        (None, False, None, MrdMethod.PCR),
        (None, True, None, None),
        (None, True, None, None),  # valueBoolean
        (None, False, 1e-6, MrdMethod.NGS),
    ]
    # urn:uuid subject → the bundle's Patient → its first identifier
    assert {r.patient_id for r in results if isinstance(r, LabResult | Rejection)} == {"CART-0001"}
    cd19_pct, cd19_abs = results[9:]
    assert (cd19_pct.analyte, cd19_pct.value) == (Analyte.CD19_PCT, 0.4)  # fraction × 100
    assert (cd19_abs.analyte, cd19_abs.value) == (Analyte.CD19_ABS, 2)
    assert [item.location for item in parsed.items[9:]] == [
        "entry 10 component 0",
        "entry 10 component 1",
    ]
    assert cd19_pct.accession == "LAB-0021"
    assert not any(item.mismatch for item in parsed.items)
    censored = results[7]
    assert isinstance(censored, LabResult)
    assert (censored.comparator, censored.value) == (Comparator.LT, pytest.approx(1e-4))


def test_patient_identifier_system(data_dir: Path, fhir_config: FhirConfig) -> None:
    config = fhir_config.model_copy(
        update={"patient_identifier_system": "urn:oid:2.16.840.1.113883.4.1"}
    )
    results = outcomes(parse_fhir(load(data_dir, "mrd_forms.json"), config))
    assert results[0].patient_id == "998877"
    missing = fhir_config.model_copy(update={"patient_identifier_system": "urn:oid:9"})
    results = outcomes(parse_fhir(load(data_dir, "mrd_forms.json"), missing))
    assert all(isinstance(r, Rejection) for r in results)
    assert {r.reason for r in results} == {RejectReason.MISSING_PATIENT_ID}


def test_rejections_fixture(data_dir: Path, kinds: Kinds) -> None:
    results = outcomes(parse_fhir(load(data_dir, "rejections.json")))
    assert kinds(results) == [
        "accepted",  # 0 comparator: censored, kept
        "rejected:unknown_unit",  # 1 SNOMED-coded unit
        "rejected:unknown_unit",  # 2 SNOMED-coded unit, even with a readable display
        "rejected:missing_patient_id",  # 3 no subject
        "rejected:missing_patient_id",  # 4 Group
        "rejected:missing_field",  # 5 no effective
        "rejected:naive_datetime",  # 6 time without offset
        "accepted",  # 7 date only: the start of the day in the policy's zone
        "rejected:invalid_timestamp",  # 8 February 30
        "rejected:invalid_field",  # 9 valueString for ANC
        "rejected:malformed_fhir",  # 10 no status
        "rejected:implausible_value",  # 11 hemoglobin g/mL
        "rejected:invalid_field",  # 12 valueRange
        "accepted",  # 13 logical subject reference
        "rejected:naive_datetime",  # 14 issued without offset
        "rejected:invalid_timestamp",  # 15 month precision
        "accepted",  # 16 unit text only
    ]
    assert results[13].patient_id == "CART-0001"
    assert results[16].value == 420
    assert results[10].patient_id == "CART-0001"
    assert results[3].patient_id is None


def test_date_only_is_the_start_of_the_day_in_the_policy_zone() -> None:
    policy = Policy(timezone="America/New_York")
    result = only(parse_fhir(observation(effectiveDateTime="2005-07-05"), FhirConfig(), policy))
    assert isinstance(result, LabResult)
    assert result.collected_at == datetime(2005, 7, 5, tzinfo=ZoneInfo("America/New_York"))
    config = FhirConfig()
    naive = only(parse_fhir(observation(effectiveDateTime="2005-07-05T10:00:00"), config))
    assert isinstance(naive, Rejection)
    assert naive.reason is RejectReason.NAIVE_DATETIME  # invalid FHIR: no default applies


@pytest.mark.parametrize(
    "text", ["2026-01-05T08:00Z", "2026-01-05T08:00+01:00", "2026-01-05T08Z", "2026-01"]
)
def test_a_time_without_seconds_is_not_a_fhir_datetime(text: str) -> None:
    result = only(parse_fhir(observation(effectiveDateTime=text)))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.INVALID_TIMESTAMP


# --- documents ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", RejectReason.MALFORMED_FHIR),
        (b"{not json", RejectReason.MALFORMED_FHIR),
        (b"\xff\xfe", RejectReason.MALFORMED_FHIR),
        (b"[1, 2]", RejectReason.MALFORMED_FHIR),
        (b'{"value": NaN}', RejectReason.MALFORMED_FHIR),
        (b"[" * 100_000, RejectReason.MALFORMED_FHIR),
        (b'{"id": "x"}', RejectReason.MALFORMED_FHIR),
        (b'{"resourceType": "Patient", "id": "x"}', RejectReason.UNSUPPORTED_MESSAGE),
        (json.dumps(bundle(kind="document")).encode(), RejectReason.UNSUPPORTED_MESSAGE),
        (json.dumps(bundle(kind="history")).encode(), RejectReason.UNSUPPORTED_MESSAGE),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": 5}',
            RejectReason.MALFORMED_FHIR,
        ),
        (
            b'{"resourceType": "Bundle", "type": "collection", "bogus": 1}',
            RejectReason.MALFORMED_FHIR,
        ),
        (  # 0.42 or 4.2? JSON does not say which of two equal names counts
            json.dumps(observation())
            .replace('"value": 0.42', '"value": 0.42, "value": 4.2')
            .encode(),
            RejectReason.MALFORMED_FHIR,
        ),
    ],
)
def test_document_rejections(raw: bytes, reason: RejectReason) -> None:
    parsed = parse_fhir(raw)
    assert parsed.document_rejection is not None
    assert parsed.document_rejection.reason is reason
    assert parsed.items == []


@pytest.mark.parametrize("kind", ["collection", "batch", "transaction", "searchset"])
def test_bundle_types(kind: str) -> None:
    assert isinstance(only(parse_fhir(bundle(observation(), kind=kind))), LabResult)


def test_input_forms() -> None:
    resource = observation()
    text = json.dumps(resource)
    for raw in (resource, text, text.encode(), b"\xef\xbb\xbf" + text.encode()):
        assert isinstance(only(parse_fhir(raw)), LabResult)


def test_non_observation_entries_are_ignored() -> None:
    parsed = parse_fhir(bundle({"resourceType": "Patient", "id": "P001"}, observation()))
    assert [item.location for item in parsed.items] == ["entry 1"]


def test_an_invalid_entry_does_not_sink_the_bundle() -> None:
    broken = observation(status=None)
    results = outcomes(parse_fhir(bundle(broken, observation())))
    assert [type(r) for r in results] == [Rejection, LabResult]
    assert results[0].reason is RejectReason.MALFORMED_FHIR


# --- subject, codes, values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "patient_id"),
    [
        ({"reference": "Patient/P001"}, "P001"),
        ({"reference": "https://fhir.example.org/r4/Patient/P001"}, "P001"),
        ({"reference": "Patient/P001/_history/7"}, "P001"),
        ({"identifier": {"system": "urn:mrn", "value": "MRN-9"}}, "MRN-9"),
        (
            {"reference": "urn:uuid:6f1c1b9e-0000-4000-8000-000000000001"},
            "6f1c1b9e-0000-4000-8000-000000000001",
        ),
    ],
)
def test_subjects(subject: dict[str, Any], patient_id: str) -> None:
    assert only(parse_fhir(observation(subject=subject))).patient_id == patient_id


def test_contained_patient() -> None:
    resource = observation(
        subject={"reference": "#p"},
        contained=[{"resourceType": "Patient", "id": "p", "identifier": [{"value": "MRN-7"}]}],
    )
    assert only(parse_fhir(resource)).patient_id == "MRN-7"


def test_urn_uuid_to_a_non_patient() -> None:
    device = {"resourceType": "Device", "id": "d1"}
    entries = [
        {"fullUrl": "urn:uuid:d1", "resource": device},
        {"resource": observation(subject={"reference": "urn:uuid:d1"})},
    ]
    parsed = parse_fhir({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    result = only(parsed)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.MISSING_PATIENT_ID


def test_local_codes_and_conflicts() -> None:
    local = {"system": "http://lab.example.org", "code": "HB"}
    config = FhirConfig(local_codes={"http://lab.example.org|HB": Analyte.HEMOGLOBIN})
    value = {"value": 9, "system": "http://unitsofmeasure.org", "code": "g/dL"}
    result = only(parse_fhir(observation(code={"coding": [local]}, valueQuantity=value), config))
    assert isinstance(result, LabResult)
    assert (result.analyte, result.loinc) == (Analyte.HEMOGLOBIN, None)
    both = {"coding": [{"system": "http://loinc.org", "code": "751-8"}, local]}
    conflict = only(parse_fhir(observation(code=both), config))
    assert isinstance(conflict, Rejection)
    assert conflict.reason is RejectReason.INVALID_FIELD


def test_unmapped_observations_are_not_validated() -> None:
    junk = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "bogus": 1,
    }
    result = only(parse_fhir(junk))
    assert result == Unmapped("2345-7", "LOINC 2345-7 is not one of our analytes")
    assert only(parse_fhir({"resourceType": "Observation", "code": {"text": "x"}})).code is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, RejectReason.INVALID_VALUE),  # not 1 (1000 /uL)
        ("0.42", RejectReason.INVALID_VALUE),
        ([0.42], RejectReason.INVALID_VALUE),
        (math.inf, RejectReason.IMPLAUSIBLE_VALUE),  # what json makes of 1e999
        pytest.param(10**400, RejectReason.IMPLAUSIBLE_VALUE, id="int-beyond-a-double"),
    ],
)
def test_a_quantity_value_that_is_no_usable_number(value: Any, reason: RejectReason) -> None:
    quantity = {"value": value, "system": "http://unitsofmeasure.org", "code": "10*9/L"}
    panel = observation(
        valueQuantity=None, component=[{"code": observation()["code"], "valueQuantity": quantity}]
    )
    for resource in (observation(valueQuantity=quantity), panel):
        result = only(parse_fhir(resource))
        assert isinstance(result, Rejection)
        assert result.reason is reason


def test_a_huge_exponent_in_the_body_is_implausible() -> None:
    raw = json.dumps(observation()).replace('"value": 0.42', '"value": 1e999')
    result = only(parse_fhir(raw.encode()))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.IMPLAUSIBLE_VALUE


@pytest.mark.parametrize(
    "code", ["751-8", ["751-8"], {"coding": "751-8"}, {"coding": [{"code": 751}]}]
)
def test_a_code_that_is_no_codeable_concept_is_rejected_not_unmapped(code: Any) -> None:
    parsed = parse_fhir(bundle(observation(code=code), observation()))
    results = outcomes(parsed)
    assert [type(r) for r in results] == [Rejection, LabResult]
    assert (results[0].reason, results[0].details[0].field) == (RejectReason.MALFORMED_FHIR, "code")


def test_accession_from_the_referenced_specimen() -> None:
    specimen = {
        "resourceType": "Specimen",
        "accessionIdentifier": {"system": "urn:oid:2.16.840.1.113883.19.5.99", "value": "L-15"},
    }
    entries = [
        {"fullUrl": "urn:uuid:s1", "resource": specimen},
        {"resource": observation(identifier=None, specimen={"reference": "urn:uuid:s1"})},
    ]
    parsed = parse_fhir({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert only(parsed).accession == "L-15"
    contained = observation(
        identifier=None,
        specimen={"reference": "#sp"},
        contained=[{**specimen, "id": "sp"}],
    )
    assert only(parse_fhir(contained)).accession == "L-15"
    # Observation.identifier first; the resource id last
    assert only(parse_fhir(observation(specimen={"reference": "#sp"}))).accession == "ACC-1"
    assert only(parse_fhir(observation(identifier=None))).accession == "obs-1"


def test_value_integer_has_no_unit() -> None:
    result = only(parse_fhir(observation(valueQuantity=None, valueInteger=420)))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.UNKNOWN_UNIT


def test_effective_instant_and_timing() -> None:
    instant = observation(effectiveDateTime=None, effectiveInstant="2026-01-05T07:00:00Z")
    assert only(parse_fhir(instant)).collected_at == datetime(2026, 1, 5, 7, tzinfo=UTC)
    timing = observation(effectiveDateTime=None, effectiveTiming={"event": ["2026-01-05"]})
    result = only(parse_fhir(timing))
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.INVALID_FIELD


def test_panel_members_take_the_panel_time() -> None:
    panel = observation(
        id="panel",
        code={"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        valueQuantity=None,
        hasMember=[{"reference": "Observation/m1"}],
    )
    member = observation(id="m1", effectiveDateTime=None)
    stranger = observation(id="m2", effectiveDateTime=None)
    results = outcomes(parse_fhir(bundle(panel, member, stranger)))
    assert isinstance(results[0], Unmapped)
    assert results[1].collected_at == datetime(2026, 1, 5, 8, tzinfo=CET)
    assert isinstance(results[2], Rejection)
    assert results[2].reason is RejectReason.MISSING_FIELD


def test_cancelled_with_an_unreadable_value_still_cancels() -> None:
    resource = observation(status="entered-in-error", valueQuantity=None, valueString="oops")
    result = only(parse_fhir(resource))
    assert isinstance(result, LabResult)
    assert (result.status, result.value) == (ResultStatus.CANCELLED, None)


# --- equivalence with HL7 v2 --------------------------------------------------------------------


def test_fhir_bundle_and_hl7_message_yield_the_same_results(
    data_dir: Path, hl7_config: Hl7Config, fhir_config: FhirConfig
) -> None:
    from_hl7 = parse_oru((data_dir / "hl7/full_panel.hl7").read_bytes(), hl7_config)
    from_fhir = parse_fhir(load(data_dir, "full_panel.json"), fhir_config)
    hl7_results = [i.outcome for i in from_hl7.items if isinstance(i.outcome, LabResult)]
    fhir_results = [i.outcome for i in from_fhir.items if isinstance(i.outcome, LabResult)]
    assert len(from_hl7.items) == len(from_fhir.items) == len(hl7_results) == len(fhir_results)
    assert len(hl7_results) == 18
    assert [r.model_dump() for r in hl7_results] == [r.model_dump() for r in fhir_results]


# --- never raise --------------------------------------------------------------------------------


def assert_well_formed(parsed: FhirParse) -> None:
    assert isinstance(parsed, FhirParse)
    rejections = [parsed.document_rejection] if parsed.document_rejection else []
    for item in parsed.items:
        assert isinstance(item.outcome, LabResult | Rejection | Unmapped)
        if isinstance(item.outcome, Rejection):
            rejections.append(item.outcome)
    for rejection in rejections:
        assert isinstance(rejection.reason, RejectReason)
        assert all(PARSER_BUG not in d.message for d in rejection.details)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert_well_formed(parse_fhir(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
PATHS = [
    ("status",),
    ("code",),
    ("code", "coding"),
    ("subject",),
    ("subject", "reference"),
    ("effectiveDateTime",),
    ("issued",),
    ("valueQuantity",),
    ("valueQuantity", "value"),
    ("valueQuantity", "code"),
    ("valueQuantity", "comparator"),
    ("valueString",),
    ("valueCodeableConcept",),
    ("component",),
    ("identifier",),
    ("meta",),
    ("performer",),
    ("hasMember",),
    ("resourceType",),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=4), st.booleans()
)
def test_mutated_observations_never_raise(
    edits: list[tuple[tuple[str, ...], Any]], wrap: bool
) -> None:
    resource = observation()
    for path, value in edits:
        target: Any = resource
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = copy.deepcopy(value)
    document = bundle(resource, kind="transaction") if wrap else resource
    assert_well_formed(parse_fhir(document))
    assert_well_formed(parse_fhir(json.dumps(document)))
