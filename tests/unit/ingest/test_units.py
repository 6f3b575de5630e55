"""Unit whitelist (streams/ingest/units.py; docs/clinical-spec.md §0 "Units")."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.vocab import CANONICAL_UNIT, Analyte, RejectReason
from streams.ingest.units import FACTORS, accepted_units, normalise_unit, to_canonical

A = Analyte


@pytest.mark.parametrize(
    ("analyte", "value", "unit", "expected"),
    [
        # counts: every spelling docs/clinical-spec.md lists
        (A.ANC, 420, "/uL", 420),
        (A.ANC, 420, "/µL", 420),
        (A.ANC, 420, "/μL", 420),
        (A.ANC, 420, "cells/uL", 420),
        (A.ANC, 420, "{cells}/uL", 420),
        (A.ANC, 420, "/mcL", 420),
        (A.ANC, 420, "/mm3", 420),
        (A.ANC, 0.42, "10*3/uL", 420),
        (A.ANC, 0.42, "10^3/uL", 420),
        (A.ANC, 0.42, "x10E3/uL", 420),
        (A.ANC, 0.42, "K/uL", 420),
        (A.ANC, 0.42, "k/µl", 420),
        (A.ANC, 0.42, "10*9/L", 420),
        (A.ANC, 0.42, "10^9/L", 420),
        (A.ANC, 0.42, "x10*9/L", 420),
        (A.ANC, 0.42, " 10 ^ 9 / l ", 420),
        (A.ANC, 1.1, "10*9/L", 1100),
        (A.ALC, 0.3, "10*3{cells}/uL", 300),
        (A.WBC, 4.6, "10*9/L", 4600),
        (A.CD19_ABS, 3, "cells/mm3", 3),
        # 10*6/L is exactly /uL (1 L = 10*6 uL): European lymphocyte subset reports
        (A.CD19_ABS, 250, "10*6/L", 250),
        (A.CD19_ABS, 250, "x10^6/L", 250),
        (A.ALC, 310, "10*6/L", 310),
        (A.PLATELETS, 45000, "10*6/L", 45),
        # platelets are canonical in 10*3/uL
        (A.PLATELETS, 45, "10*3/uL", 45),
        (A.PLATELETS, 45, "10^9/L", 45),
        (A.PLATELETS, 210000, "{cells}/uL", 210),
        (A.PLATELETS, 45, "K/uL", 45),
        # mass concentrations
        (A.IGG, 3.2, "g/L", 320),
        (A.IGG, 320, "mg/dL", 320),
        (A.IGG, 0.32, "g/dL", 320),
        (A.HEMOGLOBIN, 89, "g/L", 8.9),
        (A.HEMOGLOBIN, 8.9, "g/dL", 8.9),
        (A.HEMOGLOBIN, 12.5, "g/mL", 1250),  # known, and then implausible (normalise)
        (A.FERRITIN, 1850, "ng/mL", 1850),
        (A.FERRITIN, 1850, "ug/L", 1850),
        (A.FERRITIN, 1850, "µg/L", 1850),
        (A.FERRITIN, 1850, "mcg/L", 1850),
        (A.FIBRINOGEN, 1.2, "g/L", 120),
        (A.FIBRINOGEN, 120, "mg/dL", 120),
        (A.CRP, 4.5, "mg/dL", 45),
        (A.CRP, 45, "mg/L", 45),
        (A.CRP, 45, "ug/mL", 45),
        (A.BILIRUBIN, 1.4, "mg/dL", 1.4),
        (A.BILIRUBIN, 17.104, "umol/L", 1),
        (A.BILIRUBIN, 17.104, "µmol/L", 1),
        (A.TRIGLYCERIDES, 1, "mmol/L", 88.57),
        (A.TRIGLYCERIDES, 150, "mg/dL", 150),
        # enzymes
        (A.ALT, 210, "U/L", 210),
        (A.AST, 180, "IU/L", 180),
        (A.LDH, 650, "[IU]/L", 650),
        (A.LDH, 650, "u/l", 650),
        (A.ALT, 1.5, "µkat/L", 90),
        # CD19 % and MRD fractions
        (A.CD19_PCT, 0.5, "%", 0.5),
        (A.CD19_PCT, 0.005, "1", 0.5),
        (A.MRD, 0.0001, "1", 0.0001),
        (A.MRD, 0.01, "%", 0.0001),
        (A.MRD, 150, "/10*6", 0.00015),
        (A.MRD, 150, "/10^6", 0.00015),
    ],
)
def test_accepted_spellings_convert_to_the_canonical_unit(
    analyte: Analyte, value: float, unit: str, expected: float
) -> None:
    result = to_canonical(analyte, value, unit)
    assert isinstance(result, float)
    assert math.isclose(result, expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("analyte", "unit"),
    [
        (A.ANC, "g/L"),  # known unit, wrong kind
        (A.ANC, "%"),  # a differential percentage is not ANC
        (A.ANC, "/L"),
        (A.ANC, "/nL"),
        (A.ANC, "giga.l-1"),
        (A.PLATELETS, "G/L"),  # "giga per litre" reads as grams: rejected, never misread
        (A.HEMOGLOBIN, "g/l-1"),
        (A.HEMOGLOBIN, "mmol/L"),  # molar hemoglobin is not on the whitelist
        (A.IGG, "U/L"),
        (A.IGG, "mmol/L"),
        (A.ALT, "mg/dL"),
        (A.ALT, "U/mL"),
        (A.CD19_PCT, "/uL"),
        (A.CD19_ABS, "%"),
        (A.MRD, "/uL"),
        (A.MRD, "{ratio}"),  # only an annotation: UCUM would read 1, we do not
        (A.CD19_PCT, "{fraction}"),
        (A.MRD, "ppm"),
        (A.FERRITIN, "iU/mL"),
        (A.ANC, "MMOLL"),
        (A.ANC, None),
        (A.ANC, ""),
        (A.ANC, "   "),
        (A.MRD, None),  # missing unit: even the fraction is not guessed
        (A.CD19_PCT, None),
    ],
)
def test_unknown_incompatible_or_missing_units_are_rejected(
    analyte: Analyte, unit: str | None
) -> None:
    assert to_canonical(analyte, 1.0, unit) is RejectReason.UNKNOWN_UNIT


def test_every_analyte_accepts_its_canonical_unit_unchanged() -> None:
    for analyte, unit in CANONICAL_UNIT.items():
        assert to_canonical(analyte, 12.5, unit) == 12.5, analyte


def test_every_analyte_has_a_whitelist() -> None:
    assert set(FACTORS) == set(Analyte)
    assert all(accepted_units(analyte) for analyte in Analyte)


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("{cells}/uL", "/ul"),
        ("cells/µL", "/ul"),
        ("x10E3/uL", "10*3/ul"),
        ("10^9/L", "10*9/l"),
        ("K/uL", "10*3/ul"),
        ("mcg/dL", "ug/dl"),
        ("{Ratio}", None),
        ("", None),
        (None, None),
    ],
)
def test_normalised_keys(spelling: str | None, key: str | None) -> None:
    assert normalise_unit(spelling) == key


# Lab values: zero or between 1e-9 and 1e6 (no subnormal floats: they are not measurements).
finite = st.just(0.0) | st.floats(min_value=1e-9, max_value=1e6)


@settings(max_examples=200, deadline=None)
@given(finite)
def test_g_per_l_to_mg_per_dl_is_times_100_and_back(grams_per_l: float) -> None:
    igg_mg_dl = to_canonical(A.IGG, grams_per_l, "g/L")
    assert isinstance(igg_mg_dl, float)
    assert math.isclose(igg_mg_dl, grams_per_l * 100, rel_tol=1e-11)
    fibrinogen_mg_dl = to_canonical(A.FIBRINOGEN, grams_per_l, "g/L")
    assert fibrinogen_mg_dl == igg_mg_dl
    # back: mg/dL read as a hemoglobin (canonical g/dL) is the same mass, g/dL = g/L ÷ 10
    grams_per_dl = to_canonical(A.HEMOGLOBIN, igg_mg_dl, "mg/dL")
    assert isinstance(grams_per_dl, float)
    assert math.isclose(grams_per_dl * 10, grams_per_l, rel_tol=1e-11)


@settings(max_examples=200, deadline=None)
@given(finite, st.sampled_from(list(Analyte)))
def test_conversion_round_trips_through_every_accepted_unit(value: float, analyte: Analyte) -> None:
    canonical = CANONICAL_UNIT[analyte]
    for unit, factor in FACTORS[analyte].items():
        there = to_canonical(analyte, value, unit)
        assert isinstance(there, float)
        # canonical → unit → canonical with the inverse factor
        assert math.isclose(there, value * float(factor), rel_tol=1e-11)
        assert to_canonical(analyte, there, canonical) == there


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.sampled_from(list(Analyte)))
def test_any_text_is_accepted_or_unknown_never_an_exception(unit: str, analyte: Analyte) -> None:
    result = to_canonical(analyte, 1.0, unit)
    assert isinstance(result, float) or result is RejectReason.UNKNOWN_UNIT
