"""Whitelist unit normalisation to the canonical units of ``schemas.vocab.CANONICAL_UNIT``.

Sources: docs/clinical-spec.md §0 "Units"; UCUM (the Unified Code for
Units of Measure, https://ucum.org) for the spellings; the wire contracts in schemas/ for the
canonical units. A wrong unit must never become an alert, so nothing here is guessed: a unit is
accepted only if it is on the whitelist *for that analyte*; every other unit, including a known
unit of the wrong kind (``g/L`` for ANC), is ``RejectReason.UNKNOWN_UNIT``.

Matching is lenient only where it cannot change meaning:

- surrounding and inner blanks are ignored;
- ``µ`` (U+00B5), ``μ`` (U+03BC) and the ``mc`` prefix (``mcg``, ``mcL``) read as ``u`` (micro);
- letter case is ignored (``mg/dl``, ``G/L``; a lower-case ``g/l`` on a platelet count is then
  grams, which platelets do not accept, so "giga per litre" written ``G/L`` is rejected, never
  misread);
- UCUM annotations in braces are dropped (``{cells}/uL`` = ``/uL``; ``10*3{cells}/uL``) and so is
  a leading ``cells`` (``cells/uL``); a unit that is *only* an annotation (``{ratio}``) is
  rejected, because UCUM reads it as ``1`` and a bare ``1`` is the fraction of MRD and CD19 %;
- powers of ten may be written ``10*3``, ``10^3``, ``x10E3``, ``x10*3``, ``10e3``; ``K/uL`` is
  ``10*3/uL``.

Per analyte (canonical unit first):

- counts ANC, ALC, WBC, CD19 abs: ``/uL``; ``10*3/uL`` and ``10*9/L`` (× 1000); ``/mm3`` and
  ``10*6/L`` (= /µL, exact; common for lymphocyte subsets, ``10*6/L`` in European reports);
- platelets: ``10*3/uL``; ``10*9/L`` (× 1); ``/uL``, ``/mm3``, ``10*6/L`` (÷ 1000);
- mass concentrations (IgG, ferritin, fibrinogen, hemoglobin, bilirubin, triglycerides, CRP):
  any of ``g/L g/dL g/mL mg/L mg/dL mg/mL ug/L ug/dL ug/mL ng/L ng/dL ng/mL pg/mL`` converted
  exactly (the factors are powers of ten, computed as fractions). ``g/mL`` is deliberately known:
  a hemoglobin sent as "12.5 g/mL" converts to 1250 g/dL and is then rejected by the
  plausibility limits (``implausible_value``) — the report says what is wrong with it;
- bilirubin also ``umol/L`` (÷ 17.104: 1 mg/dL = 17.104 µmol/L, molar mass 584.66 g/mol);
- triglycerides also ``mmol/L`` (× 88.57: the conventional factor, triolein 885.7 g/mol);
- enzymes ALT, AST, LDH: ``U/L``, ``IU/L``, ``[IU]/L`` (× 1); ``ukat/L`` (× 60, exact:
  1 µkat = 60 µmol/min);
- CD19 %: ``%``; ``1`` (a fraction, × 100);
- MRD (canonical ``1``, a fraction): ``1``; ``%`` (÷ 100); ``/10*6`` ("n per million", × 10⁻⁶).

A missing unit (``None`` or blank) is rejected for every analyte: no analyte of ours is
dimensionless enough to guess — "0.5" for CD19 or MRD could be a fraction or a percent, and a
count could be per µL or per nL. Results without a value (qualitative MRD, cancellations) need
no unit; ``normalise_lab_result`` does not call this module for them.
"""

import re
from fractions import Fraction
from functools import lru_cache
from typing import Final

from schemas.vocab import Analyte, RejectReason

# Mass concentration in g/L per unit (exact powers of ten).
_MASS_G_PER_L: Final[dict[str, Fraction]] = {
    "g/l": Fraction(1),
    "g/dl": Fraction(10),
    "g/ml": Fraction(1000),
    "mg/l": Fraction(1, 1000),
    "mg/dl": Fraction(1, 100),
    "mg/ml": Fraction(1),
    "ug/l": Fraction(1, 10**6),
    "ug/dl": Fraction(1, 10**5),
    "ug/ml": Fraction(1, 1000),
    "ng/l": Fraction(1, 10**9),
    "ng/dl": Fraction(1, 10**8),
    "ng/ml": Fraction(1, 10**6),
    "pg/ml": Fraction(1, 10**9),
}

_COUNT_PER_UL: Final[dict[str, Fraction]] = {
    "/ul": Fraction(1),
    "/mm3": Fraction(1),
    "10*6/l": Fraction(1),
    "10*3/ul": Fraction(1000),
    "10*9/l": Fraction(1000),
}

_ENZYME_U_PER_L: Final[dict[str, Fraction]] = {
    "u/l": Fraction(1),
    "iu/l": Fraction(1),
    "[iu]/l": Fraction(1),
    "ukat/l": Fraction(60),
}

#: Bilirubin: 1 mg/dL = 17.104 µmol/L (molar mass 584.66 g/mol).
BILIRUBIN_UMOL_L_PER_MG_DL: Final = Fraction(17104, 1000)
#: Triglycerides: 1 mmol/L = 88.57 mg/dL (conventional, as triolein 885.7 g/mol).
TRIGLYCERIDES_MG_DL_PER_MMOL_L: Final = Fraction(8857, 100)


def _mass(canonical: str) -> dict[str, Fraction]:
    base = _MASS_G_PER_L[canonical]
    return {unit: g_per_l / base for unit, g_per_l in _MASS_G_PER_L.items()}


def _build_factors() -> dict[Analyte, dict[str, Fraction]]:
    counts = dict(_COUNT_PER_UL)
    factors: dict[Analyte, dict[str, Fraction]] = {
        Analyte.ANC: counts,
        Analyte.ALC: counts,
        Analyte.WBC: counts,
        Analyte.CD19_ABS: counts,
        Analyte.PLATELETS: {
            "10*3/ul": Fraction(1),
            "10*9/l": Fraction(1),
            "/ul": Fraction(1, 1000),
            "/mm3": Fraction(1, 1000),
            "10*6/l": Fraction(1, 1000),
        },
        Analyte.IGG: _mass("mg/dl"),
        Analyte.FERRITIN: _mass("ng/ml"),
        Analyte.FIBRINOGEN: _mass("mg/dl"),
        Analyte.HEMOGLOBIN: _mass("g/dl"),
        Analyte.BILIRUBIN: {**_mass("mg/dl"), "umol/l": 1 / BILIRUBIN_UMOL_L_PER_MG_DL},
        Analyte.TRIGLYCERIDES: {**_mass("mg/dl"), "mmol/l": TRIGLYCERIDES_MG_DL_PER_MMOL_L},
        Analyte.CRP: _mass("mg/l"),
        Analyte.ALT: _ENZYME_U_PER_L,
        Analyte.AST: _ENZYME_U_PER_L,
        Analyte.LDH: _ENZYME_U_PER_L,
        Analyte.CD19_PCT: {"%": Fraction(1), "1": Fraction(100)},
        Analyte.MRD: {"1": Fraction(1), "%": Fraction(1, 100), "/10*6": Fraction(1, 10**6)},
    }
    missing = set(Analyte) - set(factors)
    if missing:  # pragma: no cover - guarded by a unit test as well
        raise RuntimeError(f"no unit whitelist for {sorted(missing)}")
    return factors


#: Analyte → normalised unit spelling → factor to the canonical unit.
FACTORS: Final[dict[Analyte, dict[str, Fraction]]] = _build_factors()

#: Longer spellings are no unit of ours (and never reach the regular expressions below).
MAX_UNIT_CHARS: Final = 64
_ANNOTATION = re.compile(r"\{[^{}]*\}")
_MICRO = str.maketrans({"µ": "u", "μ": "u"})
_MC_PREFIX = re.compile(r"mc(?=[gl])")
_POWER_OF_TEN = re.compile(r"(?:x|\*)?10(?:\^|\*|e)(?=[-+]?\d)")
_LEADING_CELLS = re.compile(r"^(?:(10\*[-+]?\d+))?cells?(?=/)")


@lru_cache(maxsize=1024)
def normalise_unit(unit: str | None) -> str | None:
    """The lenient matching key of a unit spelling, or ``None`` when nothing usable is left.

    Remembered: a feed sends a handful of spellings, each on every result (the regular
    expressions were a tenth of a result's cost); bounded, so odd input cannot grow it."""
    if unit is None or len(unit) > MAX_UNIT_CHARS:
        return None
    key = "".join(unit.split()).translate(_MICRO).lower()
    if not key:
        return None
    if _ANNOTATION.sub("", key) == "":
        return None  # only an annotation, e.g. "{ratio}": UCUM reads it as 1; we do not
    key = _ANNOTATION.sub("", key)
    key = _MC_PREFIX.sub("u", key)
    key = _POWER_OF_TEN.sub("10*", key)
    key = _LEADING_CELLS.sub(lambda m: m.group(1) or "", key)
    if key.startswith("k/"):
        key = "10*3/" + key[2:]
    return key or None


def factor_for(analyte: Analyte, unit: str | None) -> Fraction | None:
    """The exact factor from ``unit`` to the analyte's canonical unit; ``None`` if not accepted."""
    key = normalise_unit(unit)
    if key is None:
        return None
    return FACTORS[analyte].get(key)


def to_canonical(analyte: Analyte, value: float, unit: str | None) -> float | RejectReason:
    """``value`` in ``unit`` expressed in ``CANONICAL_UNIT[analyte]``, or ``UNKNOWN_UNIT``."""
    factor = factor_for(analyte, unit)
    if factor is None:
        return RejectReason.UNKNOWN_UNIT
    if factor == 1:
        return float(value)
    # Multiply by the numerator and divide by the denominator, then drop binary noise beyond 12
    # significant digits (far below any assay's precision): 1.1 × 10*9/L is 1100 /µL, not
    # 1100.0000000000002, in every alert that quotes it.
    return float(f"{float(value) * factor.numerator / factor.denominator:.12g}")


def accepted_units(analyte: Analyte) -> tuple[str, ...]:
    """The normalised spellings accepted for ``analyte`` (for documentation and error texts)."""
    return tuple(sorted(FACTORS[analyte]))
