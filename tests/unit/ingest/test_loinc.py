"""LOINC → analyte table (streams/ingest/loinc.py)."""

from pathlib import Path

import pytest

from schemas.vocab import CANONICAL_UNIT, Analyte
from streams.ingest.loinc import (
    LOINC_TO_ANALYTE,
    CodeMatch,
    SentCode,
    analyte_for_loinc,
    has_valid_check_digit,
    is_loinc_system,
    resolve_codes,
)

A = Analyte


@pytest.mark.parametrize(
    ("code", "analyte"),
    [
        ("751-8", A.ANC),
        ("26499-4", A.ANC),
        ("2465-3", A.IGG),
        ("2276-4", A.FERRITIN),
        ("8116-6", A.CD19_ABS),
        ("8117-4", A.CD19_PCT),
        ("3255-7", A.FIBRINOGEN),
        ("1742-6", A.ALT),
        ("1920-8", A.AST),
        ("2532-0", A.LDH),
        ("14804-9", A.LDH),
        ("1988-5", A.CRP),
        ("777-3", A.PLATELETS),
        ("26515-7", A.PLATELETS),
        ("718-7", A.HEMOGLOBIN),
        ("731-0", A.ALC),
        ("26474-7", A.ALC),
        ("6690-2", A.WBC),
        ("26464-8", A.WBC),
        ("2571-8", A.TRIGLYCERIDES),
        ("1975-2", A.BILIRUBIN),
        ("14631-6", A.BILIRUBIN),
        (" 751-8 ", A.ANC),
    ],
)
def test_mapped_codes(code: str, analyte: Analyte) -> None:
    assert analyte_for_loinc(code) is analyte


@pytest.mark.parametrize(
    "code",
    [
        "770-8",  # neutrophils/100 leukocytes: a percentage, never ANC
        "26511-6",  # neutrophils/100 leukocytes in blood
        "736-9",  # lymphocytes/100 leukocytes
        "11156-7",  # leukocyte morphology finding (misused for counts in one corpus feed)
        "11125-2",  # platelet morphology finding
        "20509-6",  # hemoglobin by calculation: not in the table on purpose
        "1554-5",
        "",
        None,
    ],
)
def test_codes_that_are_not_ours(code: str | None) -> None:
    assert analyte_for_loinc(code) is None


def test_every_code_in_the_table_has_a_valid_check_digit() -> None:
    bad = [code for code in LOINC_TO_ANALYTE if not has_valid_check_digit(code)]
    assert bad == []


def test_check_digit_rejects_typos() -> None:
    assert has_valid_check_digit("751-8")
    assert not has_valid_check_digit("751-7")
    assert not has_valid_check_digit("7518")
    assert not has_valid_check_digit("LP38316-3")


def test_every_analyte_except_mrd_has_a_code() -> None:
    # MRD has no LOINC code we are sure of: it arrives by local code or analyte.
    assert set(LOINC_TO_ANALYTE.values()) == set(Analyte) - {A.MRD}
    assert all(analyte in CANONICAL_UNIT for analyte in LOINC_TO_ANALYTE.values())


@pytest.mark.parametrize(
    ("system", "is_loinc"),
    [
        ("LN", True),
        ("ln", True),
        ("LOINC", True),
        ("2.16.840.1.113883.6.1", True),
        ("http://loinc.org", True),
        ("http://loinc.org/", True),
        ("L", False),
        ("99USI", False),
        ("POST 12H CFST:MCNC:PT:SER/PLAS:QN", False),
        ("", False),
        (None, False),
    ],
)
def test_loinc_systems(system: str | None, is_loinc: bool) -> None:
    assert is_loinc_system(system) is is_loinc


def sent(code: str, is_loinc: bool = True, *keys: str) -> SentCode:
    return SentCode(code, is_loinc, keys or (code,))


def test_resolve_codes_prefers_the_table_and_records_the_mapped_loinc() -> None:
    match = resolve_codes([sent("12345-6"), sent("751-8")], {})
    assert match == CodeMatch(A.ANC, "751-8", None)


def test_resolve_codes_unknown_loinc_is_recorded() -> None:
    assert resolve_codes([sent("2345-7")], {}) == CodeMatch(None, "2345-7", None)


def test_resolve_codes_local_codes() -> None:
    local = {"MRD1": A.MRD, "99999-9": A.MRD, "http://lab|HB": A.HEMOGLOBIN}
    assert resolve_codes([sent("MRD1", False)], local) == CodeMatch(A.MRD, None, "MRD1")
    # a LOINC code the table lacks may be named locally
    assert resolve_codes([sent("99999-9")], local) == CodeMatch(A.MRD, "99999-9", "99999-9")
    # the table wins for codes it knows: a local entry cannot remap 751-8
    assert resolve_codes([sent("751-8")], {"751-8": A.MRD}).analyte is A.ANC
    keyed = resolve_codes([sent("HB", False, "http://lab|HB", "HB")], local)
    assert keyed == CodeMatch(A.HEMOGLOBIN, None, "http://lab|HB")


@pytest.mark.parametrize(
    "codes",
    [
        [sent("751-8"), sent("718-7")],
        [sent("751-8"), sent("HB", False)],
    ],
)
def test_resolve_codes_conflicts(codes: list[SentCode]) -> None:
    match = resolve_codes(codes, {"HB": A.HEMOGLOBIN})
    assert match.analyte is None
    assert match.conflict is not None
    assert "anc" in match.conflict
    assert "hemoglobin" in match.conflict


def test_the_integration_guide_lists_every_code() -> None:
    guide = (Path(__file__).resolve().parents[3] / "docs" / "feeds.md").read_text(encoding="utf-8")
    missing = [code for code in LOINC_TO_ANALYTE if code not in guide]
    assert missing == []
