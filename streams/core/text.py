"""How values read in alert texts: units a clinician recognises, comparators kept, no float noise.

``quantity(Analyte.ANC, result)`` → ``"< 100 /µL"``; MRD levels read ``"2.7 × 10⁻⁶ (0.00027 %)"``
(two significant digits); assay sensitivities ``"10⁻⁴"``. docs/clinical-spec.md
"Alert texts".
"""

import math

from schemas.vocab import Analyte, RiskFactor
from streams.core.state import StoredResult

DISPLAY_UNIT = {
    Analyte.CD19_PCT: "% of lymphocytes",
    Analyte.CD19_ABS: "/µL",
    Analyte.IGG: "mg/dL",
    Analyte.ANC: "/µL",
    Analyte.FERRITIN: "ng/mL",
    Analyte.MRD: "",
    Analyte.ALC: "/µL",
    Analyte.WBC: "/µL",
    Analyte.PLATELETS: "× 10³/µL",
    Analyte.HEMOGLOBIN: "g/dL",
    Analyte.FIBRINOGEN: "mg/dL",
    Analyte.ALT: "U/L",
    Analyte.AST: "U/L",
    Analyte.LDH: "U/L",
    Analyte.BILIRUBIN: "mg/dL",
    Analyte.TRIGLYCERIDES: "mg/dL",
    Analyte.CRP: "mg/L",
}
NAME = {
    Analyte.CD19_PCT: "CD19+",
    Analyte.CD19_ABS: "CD19+",
    Analyte.IGG: "IgG",
    Analyte.ANC: "ANC",
    Analyte.FERRITIN: "ferritin",
    Analyte.MRD: "MRD",
    Analyte.ALC: "ALC",
    Analyte.WBC: "WBC",
    Analyte.PLATELETS: "platelets",
    Analyte.HEMOGLOBIN: "hemoglobin",
    Analyte.FIBRINOGEN: "fibrinogen",
    Analyte.ALT: "ALT",
    Analyte.AST: "AST",
    Analyte.LDH: "LDH",
    Analyte.BILIRUBIN: "bilirubin",
    Analyte.TRIGLYCERIDES: "triglycerides",
    Analyte.CRP: "CRP",
}
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")

#: Labels of the risk factors (Westhafen 2025 Table 1 and the HCT section; docs/clinical-spec.md).
RISK_FACTOR_LABEL = {
    RiskFactor.HIGH_DISEASE_BURDEN: "high disease burden (≥ 5 % marrow blasts)",
    RiskFactor.BLINATUMOMAB_FAILURE: "non-response to blinatumomab",
    RiskFactor.KMT2A_REARRANGED: "KMT2A rearrangement (CD19 target-loss risk)",
    RiskFactor.LOW_CELL_DOSE: "low cell dose",
    RiskFactor.EARLY_POST_HCT_RELAPSE: "autologous product within 6 months of relapse after HCT",
    RiskFactor.SUBOPTIMAL_FLUDARABINE: "suboptimal fludarabine exposure (AUC < 13.8 mg·h/L)",
    RiskFactor.DONOR_AVAILABLE_WISHES_HCT: "donor available and patient/family wish HCT",
    RiskFactor.REFRACTORY_DISEASE: "refractory disease",
    RiskFactor.TP53_MUTATED: "TP53 mutation",
    RiskFactor.CARDIAC_PULMONARY_COMORBIDITY: "cardiac or pulmonary comorbidity",
}
#: Westhafen 2025 Table 1, "Risk Factors for CAR T-cell Therapy Failure" (and item 4 of the list
#: it illustrates: target antigen loss, KMT2A rearrangement).
TABLE_1 = frozenset(
    {
        RiskFactor.HIGH_DISEASE_BURDEN,
        RiskFactor.BLINATUMOMAB_FAILURE,
        RiskFactor.KMT2A_REARRANGED,
        RiskFactor.LOW_CELL_DOSE,
        RiskFactor.EARLY_POST_HCT_RELAPSE,
        RiskFactor.SUBOPTIMAL_FLUDARABINE,
    }
)


def number(value: float) -> str:
    """A lab value without float noise: up to 6 significant digits, no trailing zeros."""
    return f"{value:.6g}"


def clean(value: float | None) -> float | None:
    """The value as the lab meant it: float noise from unit arithmetic rounded away."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.12g}")


def quantity(analyte: Analyte, result: StoredResult) -> str:
    """``"< 100 /µL"``, ``"399 mg/dL"``; MRD as its level (``level``)."""
    if analyte is Analyte.MRD:
        return mrd_level(result)
    prefix = "" if result.comparator is None else f"{result.comparator.value} "
    value = "?" if result.value is None else number(result.value)
    return f"{prefix}{value} {DISPLAY_UNIT[analyte]}".rstrip()


def labelled(analyte: Analyte, result: StoredResult) -> str:
    """``"ANC < 100 /µL"``."""
    return f"{NAME[analyte]} {quantity(analyte, result)}"


def power_of_ten(fraction: float) -> str:
    """``1e-4`` → ``"10⁻⁴"``; other values as a two-digit mantissa: ``"2.7 × 10⁻⁶"``."""
    if fraction <= 0:
        return number(fraction)
    exponent = math.floor(math.log10(fraction))
    mantissa = float(f"{fraction / 10**exponent:.2g}")
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    return power if mantissa == 1 else f"{mantissa:g} × {power}"


def percent(fraction: float) -> str:
    """A fraction as a percentage with two significant digits, never in exponent form."""
    value = float(f"{fraction * 100:.2g}")
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return f"{text} %"


def mrd_level(result: StoredResult) -> str:
    """``"2.7 × 10⁻⁶ (0.00027 %)"``, ``"detected, below the limit of quantification"``."""
    if result.value is None:
        return "detected, below the limit of quantification" if result.detected else "not detected"
    prefix = "" if result.comparator is None else f"{result.comparator.value} "
    return f"{prefix}{power_of_ten(result.value)} ({percent(result.value)})"


def day_count(days: int) -> str:
    """``"1 day"``, ``"3 days"``."""
    return f"{days} day" if days == 1 else f"{days} days"


def risk_factor_list(factors: tuple[RiskFactor, ...]) -> str:
    """Recorded risk factors, Table 1 ones first, as one sentence (empty when none)."""
    if not factors:
        return ""
    ordered = sorted(factors, key=lambda f: (f not in TABLE_1, f.value))
    return "Risk factors recorded at infusion: " + ", ".join(RISK_FACTOR_LABEL[f] for f in ordered)
