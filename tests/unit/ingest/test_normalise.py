"""normalise_lab_result (streams/ingest/normalise.py) and the MRD text forms."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.lab_result import LabResult
from schemas.records import Rejection, decode_record
from schemas.vocab import Analyte, Comparator, MrdMethod, RejectReason, ResultStatus
from streams.core.policy import Policy
from streams.ingest.files import ndjson_outcome
from streams.ingest.normalise import (
    Unmapped,
    mrd_from_text,
    mrd_method_from_text,
    normalise_lab_result,
    sensitivity_from_text,
)

COLLECTED = datetime(2026, 1, 5, 8, tzinfo=UTC)


def lab(**fields: Any) -> LabResult:
    record = {"patient_id": "P001", "collected_at": COLLECTED, **fields}
    return LabResult.model_validate(record)


def test_analyte_from_loinc_and_canonical_unit(policy: Policy) -> None:
    result = normalise_lab_result(lab(loinc="751-8", value=0.42, unit="10*9/L"), policy)
    assert isinstance(result, LabResult)
    assert (result.analyte, result.value, result.unit) == (Analyte.ANC, 420, "/uL")
    assert result.loinc == "751-8"


def test_the_wire_example_passes_unchanged(policy: Policy) -> None:
    line = (
        '{"type": "lab_result", "patient_id": "P001", "analyte": "anc", "value": 420, '
        '"unit": "/uL", "collected_at": "2026-01-05T08:00:00Z", "resulted_at": '
        '"2026-01-05T12:00:00Z", "status": "final", "accession": "A-123", "source": "lab-main", '
        '"loinc": "751-8"}'
    )
    decoded = decode_record(line)
    assert isinstance(decoded, LabResult)
    assert normalise_lab_result(decoded, policy) == decoded


def test_unknown_loinc_without_analyte_is_unmapped(policy: Policy) -> None:
    result = normalise_lab_result(lab(loinc="2345-7", value=5.1, unit="mmol/L"), policy)
    assert result == Unmapped("2345-7", "LOINC 2345-7 is not one of our analytes")


def test_analyte_and_loinc_that_disagree_are_rejected(policy: Policy) -> None:
    result = normalise_lab_result(lab(analyte="anc", loinc="718-7", value=1, unit="/uL"), policy)
    assert isinstance(result, Rejection)
    assert (result.reason, result.details[0].field) == (RejectReason.INVALID_FIELD, "loinc")
    assert result.patient_id == "P001"


def test_analyte_with_a_loinc_code_we_do_not_know_is_kept(policy: Policy) -> None:
    result = normalise_lab_result(lab(analyte="mrd", loinc="99999-9", value=0.0), policy)
    assert isinstance(result, Rejection)  # no unit: the fraction is not guessed
    assert result.reason is RejectReason.UNKNOWN_UNIT
    result = normalise_lab_result(lab(analyte="mrd", loinc="99999-9", detected=False), policy)
    assert isinstance(result, LabResult)
    assert result.analyte is Analyte.MRD


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"analyte": "anc", "value": 0.42, "unit": "g/L"}, RejectReason.UNKNOWN_UNIT),
        ({"analyte": "anc", "value": 420}, RejectReason.UNKNOWN_UNIT),
        ({"analyte": "hemoglobin", "value": 12.5, "unit": "g/mL"}, RejectReason.IMPLAUSIBLE_VALUE),
        ({"analyte": "cd19_pct", "value": 120, "unit": "%"}, RejectReason.IMPLAUSIBLE_VALUE),
        ({"analyte": "mrd", "value": 150, "unit": "%"}, RejectReason.IMPLAUSIBLE_VALUE),
        ({"loinc": "751-8", "detected": True}, RejectReason.MISSING_VALUE),
    ],
)
def test_rejections_carry_reason_and_patient(
    policy: Policy, fields: dict[str, Any], reason: RejectReason
) -> None:
    result = normalise_lab_result(lab(**fields), policy)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert result.patient_id == "P001"


def test_plausibility_limits_are_a_policy_setting() -> None:
    strict = Policy(plausibility={Analyte.ANC: (0.0, 100.0)})
    result = normalise_lab_result(lab(analyte="anc", value=420, unit="/uL"), strict)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.IMPLAUSIBLE_VALUE
    assert "0..100" in result.details[0].message


def test_plausibility_limits_are_inclusive(policy: Policy) -> None:
    low, high = policy.plausibility[Analyte.HEMOGLOBIN]
    for value in (low, high):
        assert isinstance(
            normalise_lab_result(lab(analyte="hemoglobin", value=value, unit="g/dL"), policy),
            LabResult,
        )


class TestMrd:
    def test_detected_derived_from_a_value(self, policy: Policy) -> None:
        result = normalise_lab_result(lab(analyte="mrd", value=0.02, unit="%"), policy)
        assert isinstance(result, LabResult)
        assert (result.value, result.unit, result.detected) == (0.0002, "1", True)

    def test_zero_is_not_detected(self, policy: Policy) -> None:
        result = normalise_lab_result(lab(analyte="mrd", value=0, unit="1"), policy)
        assert isinstance(result, LabResult)
        assert (result.value, result.detected) == (0.0, False)

    def test_not_detected_never_becomes_zero(self, policy: Policy) -> None:
        result = normalise_lab_result(
            lab(analyte="mrd", detected=False, sensitivity=1e-4, method="ngs"), policy
        )
        assert isinstance(result, LabResult)
        assert result.value is None
        assert (result.detected, result.sensitivity, result.unit) == (False, 1e-4, "1")
        assert result.method is MrdMethod.NGS

    def test_detected_below_loq_keeps_no_value(self, policy: Policy) -> None:
        result = normalise_lab_result(lab(analyte="mrd", detected=True), policy)
        assert isinstance(result, LabResult)
        assert (result.value, result.detected) == (None, True)

    def test_per_million(self, policy: Policy) -> None:
        result = normalise_lab_result(lab(analyte="mrd", value=150, unit="/10*6"), policy)
        assert isinstance(result, LabResult)
        assert result.value == pytest.approx(1.5e-4)

    @pytest.mark.parametrize(("value", "detected"), [(0.01, False), (0.0, True)])
    def test_value_contradicting_detected_is_rejected(
        self, policy: Policy, value: float, detected: bool
    ) -> None:
        result = normalise_lab_result(
            lab(analyte="mrd", value=value, unit="1", detected=detected), policy
        )
        assert isinstance(result, Rejection)
        assert (result.reason, result.details[0].field) == (RejectReason.INVALID_FIELD, "detected")


class TestCancellations:
    def test_cancelled_without_value(self, policy: Policy) -> None:
        result = normalise_lab_result(lab(analyte="anc", status="cancelled"), policy)
        assert isinstance(result, LabResult)
        assert (result.value, result.unit, result.status) == (None, "/uL", ResultStatus.CANCELLED)

    @pytest.mark.parametrize("unit", ["g/L", None])
    def test_cancelled_with_an_unusable_value_still_cancels(
        self, policy: Policy, unit: str | None
    ) -> None:
        result = normalise_lab_result(
            lab(analyte="anc", status="cancelled", value=5, unit=unit), policy
        )
        assert isinstance(result, LabResult)
        assert (result.value, result.status) == (None, ResultStatus.CANCELLED)

    def test_cancelled_with_a_good_value_keeps_it(self, policy: Policy) -> None:
        result = normalise_lab_result(
            lab(analyte="anc", status="cancelled", value=0.5, unit="10*9/L"), policy
        )
        assert isinstance(result, LabResult)
        assert result.value == 500


@pytest.mark.parametrize(
    ("text", "detected", "sensitivity"),
    [
        ("Not detected", False, None),
        ("not detected at a sensitivity of 10^-4", False, 1e-4),
        ("Not detected (sensitivity 10⁻⁶)", False, 1e-6),
        ("undetectable, sensitivity 1E-05", False, 1e-5),
        ("Not detected, sensitivity 1x10^-5", False, 1e-5),
        # a negative sought at a level: that level is the sensitivity
        ("NOT DETECTED at 1x10^-6", False, 1e-6),
        ("not detected at 10^-4", False, 1e-4),
        ("negative at a level of 0.01 %", False, 1e-4),
        ("not detected at 5x10^-5", False, None),  # only a power of ten is read
        ("MRD detected at 10^-3", True, None),  # a positive's level is the disease, not the assay
        ("MRD negative", False, None),
        ("NEG", False, None),
        ("none detected; LOD 0.01 %", False, 1e-4),
        ("No evidence of residual disease", False, None),
        ("Detected, not quantifiable", True, None),
        ("detected below LOQ", True, None),
        ("Detected below the limit of quantification", True, None),
        ("Positive", True, None),
        ("MRD detected (0.02 %)", True, None),
    ],
)
def test_mrd_text_forms(text: str, detected: bool, sensitivity: float | None) -> None:
    finding = mrd_from_text(text)
    assert finding is not None
    assert finding.detected is detected
    assert finding.sensitivity == sensitivity


@pytest.mark.parametrize(
    "text",
    ["", "see comment", "Isolated", "negative for CD19, MRD detected", "positive; not detected"],
)
def test_ambiguous_or_unrelated_mrd_text_is_not_guessed(text: str) -> None:
    assert mrd_from_text(text) is None


def test_sensitivity_needs_its_keyword() -> None:
    assert sensitivity_from_text("not detected <0.01%") is None
    assert sensitivity_from_text("sensitivity 10^-12") is None


@pytest.mark.parametrize(
    ("text", "method"),
    [
        ("Flow cytometry", MrdMethod.FLOW),
        ("FCM^Flow cytometry^L", MrdMethod.FLOW),
        ("NGS (clonoSEQ)", MrdMethod.NGS),
        ("next-generation sequencing", MrdMethod.NGS),
        ("RQ-PCR", MrdMethod.PCR),
        ("qPCR IG/TR", MrdMethod.PCR),
        ("flow and PCR", None),
        ("", None),
        (None, None),
    ],
)
def test_mrd_methods(text: str | None, method: MrdMethod | None) -> None:
    assert mrd_method_from_text(text) is method


# --- CD19 by unit, censored values (issue 11) ------------------------------------------------


def _cd19(**fields: object) -> dict[str, object]:
    return {
        "type": "lab_result",
        "patient_id": "P1",
        "collected_at": "2026-01-05T08:00:00Z",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "analyte", "value", "mismatch"),
    [
        ({"loinc": "8117-4", "value": 4.2, "unit": "%"}, "cd19_pct", 4.2, False),
        ({"loinc": "8116-6", "value": 4.2, "unit": "%"}, "cd19_pct", 4.2, True),
        ({"loinc": "8117-4", "value": 12, "unit": "/uL"}, "cd19_abs", 12, True),
        ({"loinc": "8116-6", "value": 0.012, "unit": "10*9/L"}, "cd19_abs", 12, False),
        ({"analyte": "cd19_abs", "value": 0.5, "unit": "%"}, "cd19_pct", 0.5, True),
        ({"analyte": "cd19_pct", "loinc": "8116-6", "value": 1, "unit": "%"}, "cd19_pct", 1, False),
    ],
)
def test_cd19_is_resolved_by_the_unit_dimension(
    fields: dict[str, object], analyte: str, value: float, mismatch: bool
) -> None:
    line = json.dumps(_cd19(**fields)).encode()
    outcome, flagged = ndjson_outcome(line, Policy())
    assert isinstance(outcome, LabResult)
    assert (outcome.analyte, outcome.value, flagged) == (Analyte(analyte), value, mismatch)


def test_cd19_with_a_unit_of_neither_kind_is_still_unknown_unit() -> None:
    line = json.dumps(_cd19(loinc="8116-6", value=4, unit="g/L")).encode()
    outcome, _ = ndjson_outcome(line, Policy())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is RejectReason.UNKNOWN_UNIT


def test_censored_limit_is_converted_and_kept() -> None:
    line = json.dumps(_cd19(analyte="igg", value=1.4, unit="g/L", comparator="<")).encode()
    outcome, _ = ndjson_outcome(line, Policy())
    assert isinstance(outcome, LabResult)
    assert (outcome.comparator, outcome.value, outcome.unit) == (Comparator.LT, 140, "mg/dL")


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":["lab_result"]}',
        b'{"type":"lab_result","patient_id":"\\ud800","analyte":"anc","value":1}',
        b"[" * 50_000,
        b'{"type":"lab_result","patient_id":"P1","analyte":"anc","value":"250","unit":"/uL",'
        b'"collected_at":"2026-01-05T08:00:00Z"}',
    ],
)
def test_hostile_ndjson_lines_are_rejections(line: bytes) -> None:
    outcome, _ = ndjson_outcome(line, Policy())
    assert isinstance(outcome, Rejection)
    assert outcome.patient_id is None or outcome.patient_id.encode()
