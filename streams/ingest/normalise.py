"""Normalise one decoded ``LabResult`` before it enters the pipeline.

Source: the wire contracts in schemas/ and docs/clinical-spec.md §0 ("Units", MRD reporting forms
in section 5). Every ingest path (NDJSON, HL7 v2, FHIR) ends here, so the same rules hold for all:

1. The analyte: ``analyte`` as given, else looked up from ``loinc`` (``streams.ingest.loinc``).
   A code that maps to none of our analytes is ``Unmapped`` — counted, not dead-lettered. Both
   given but disagreeing (``anc`` with 718-7) is rejected (``invalid_field``); an ``analyte``
   with a LOINC code we do not know is kept (the code may be newer than our table).
   CD19 is resolved by the unit's dimension, whatever the code says (issue 11): a percentage or
   fraction is ``cd19_pct``, a count per volume ``cd19_abs`` — the unit is what the laboratory
   measured, and labs mix up the two CD19 codes. Such a result is accepted and flagged
   (``ResultItem.mismatch``, counted as ``code_unit_mismatch``) so the interface engineer sees it.
2. The value, converted to the canonical unit (``streams.ingest.units``; unknown or
   incompatible unit → ``unknown_unit``) and checked against ``Policy.plausibility``
   (→ ``implausible_value``). The result carries the canonical unit, also when it has no value.
   A censored value keeps its ``comparator``; its limit is converted and checked like a value.
3. MRD: ``detected`` is derived from the value when not given (``value > 0``; not for a value
   censored below a limit, which may be either); "not detected"
   never becomes 0 — the value stays ``None`` when none was reported; a value that contradicts
   the ``detected`` flag is rejected (``invalid_field``).
4. A value is required except for qualitative MRD and cancellations. A cancellation whose value
   cannot be converted is kept without its value: it only removes the earlier result, and
   refusing it would leave a value standing that the laboratory has withdrawn.

Rejections carry the patient id so that the dead-letter record can be traced.
"""

import math
import re
from dataclasses import dataclass
from typing import Any, Final

from schemas.lab_result import LabResult
from schemas.records import Rejection, decode_record
from schemas.vocab import (
    CANONICAL_UNIT,
    Analyte,
    Comparator,
    MrdMethod,
    RejectReason,
    ResultStatus,
)
from streams.core.policy import Policy
from streams.ingest.loinc import analyte_for_loinc
from streams.ingest.units import factor_for, to_canonical


def _shown(unit: str | None) -> str:
    return (unit or "")[:40]


@dataclass(frozen=True, slots=True)
class Unmapped:
    """An input that is well-formed but not for us (a test we do not monitor, a pending result).

    ``code`` is the test code as sent (LOINC or local), ``reason`` a short human-readable text.
    """

    code: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ResultItem:
    """One result of a parsed message: where it was (``OBX 4``, ``entry 3``), its raw text, and
    what became of it. ``mismatch``: accepted under another analyte than its code names (CD19
    resolved by its unit)."""

    location: str
    raw: str
    outcome: LabResult | Rejection | Unmapped
    mismatch: bool = False


def is_mismatch(claimed: Analyte | None, outcome: object) -> bool:
    """Whether an accepted result's analyte differs from the one its code (or field) named."""
    return isinstance(outcome, LabResult) and claimed is not None and outcome.analyte is not claimed


def result_item(
    location: str, raw: str, outcome: LabResult | Rejection | Unmapped, claimed: Analyte | None
) -> ResultItem:
    """A ``ResultItem`` flagged when the unit overruled the code (see ``is_mismatch``)."""
    return ResultItem(location, raw, outcome, is_mismatch(claimed, outcome))


CD19: Final = frozenset({Analyte.CD19_PCT, Analyte.CD19_ABS})


def cd19_by_unit(analyte: Analyte, unit: str | None) -> Analyte:
    """For a CD19 analyte, the one whose unit dimension ``unit`` has (else ``analyte``)."""
    if analyte not in CD19 or factor_for(analyte, unit) is not None:
        return analyte
    other = next(a for a in CD19 if a is not analyte)
    return other if factor_for(other, unit) is not None else analyte


def relocate(rejection: Rejection, fields: dict[str, str], patient_id: str | None) -> Rejection:
    """The rejection with wire field names replaced by the message's own (``value`` → ``OBX-5``).

    A value rule without a field (``negative_value``, ``missing_value``) points at the value.
    """
    details = []
    for detail in rejection.details:
        name = detail.field
        if name is None and detail.reason in (
            RejectReason.NEGATIVE_VALUE,
            RejectReason.MISSING_VALUE,
        ):
            name = "value"
        details.append(detail.model_copy(update={"field": fields.get(name or "", name)}))
    return Rejection(tuple(details), patient_id or rejection.patient_id)


def lab_result_from_fields(
    record: dict[str, Any], policy: Policy, fields: dict[str, str], patient_id: str | None
) -> LabResult | Rejection | Unmapped:
    """A message's result, laid out as a wire record, validated and normalised.

    What a feed parser (HL7 v2, FHIR) ends with: rejections name the message's own fields. A
    number too large for a double (5000 digits in HL7 NM, ``1e999`` in JSON) is a number, but
    beyond every plausibility limit: ``implausible_value`` (``negative_value`` below zero).
    """
    value = record.get("value")
    if isinstance(value, float) and math.isinf(value):
        reason = RejectReason.NEGATIVE_VALUE if value < 0 else RejectReason.IMPLAUSIBLE_VALUE
        return Rejection.of(
            reason, "value is beyond any plausible value", fields.get("value"), patient_id
        )
    decoded = decode_record({"type": "lab_result", **record})
    if isinstance(decoded, Rejection):
        return relocate(decoded, fields, patient_id)
    assert isinstance(decoded, LabResult)
    outcome = normalise_lab_result(decoded, policy)
    return relocate(outcome, fields, patient_id) if isinstance(outcome, Rejection) else outcome


def normalise_lab_result(result: LabResult, policy: Policy) -> LabResult | Rejection | Unmapped:
    """Resolve the analyte, convert to the canonical unit, check plausibility and MRD rules."""
    patient_id = result.patient_id
    mapped = analyte_for_loinc(result.loinc)
    analyte = result.analyte
    if analyte is None:
        if mapped is None:
            return Unmapped(result.loinc, f"LOINC {result.loinc} is not one of our analytes")
        analyte = mapped
    elif mapped is not None and mapped is not analyte and {mapped, analyte} != CD19:
        return Rejection.of(
            RejectReason.INVALID_FIELD,
            f"analyte {analyte.value!r} disagrees with LOINC {result.loinc} ({mapped.value})",
            "loinc",
            patient_id,
        )

    value = result.value
    cancelled = result.status is ResultStatus.CANCELLED
    if value is not None:
        analyte = cd19_by_unit(analyte, result.unit)
        converted = to_canonical(analyte, value, result.unit)
        if isinstance(converted, RejectReason):
            if not cancelled:
                given = (
                    f"unit {_shown(result.unit)!r}"
                    if result.unit and result.unit.strip()
                    else "no unit"
                )
                return Rejection.of(
                    converted,
                    f"{given} is not accepted for {analyte.value} "
                    f"(canonical {CANONICAL_UNIT[analyte]})",
                    "unit",
                    patient_id,
                )
            value = None
        else:
            low, high = policy.plausibility[analyte]
            if not low <= converted <= high:
                if not cancelled:
                    return Rejection.of(
                        RejectReason.IMPLAUSIBLE_VALUE,
                        f"{analyte.value} {converted:g} {CANONICAL_UNIT[analyte]} "
                        f"(sent as {value:g} {_shown(result.unit)}) is outside the plausible range "
                        f"{low:g}..{high:g}",
                        "value",
                        patient_id,
                    )
                value = None
            else:
                value = converted

    detected = result.detected
    if analyte is Analyte.MRD:
        below_limit = result.comparator in (Comparator.LT, Comparator.LE)
        # "< 0.01 %" may be detected below the limit or not detected: never guessed
        if value is not None and not below_limit:
            if detected is None:
                detected = value > 0
            elif detected != (value > 0):
                return Rejection.of(
                    RejectReason.INVALID_FIELD,
                    f"MRD detected={detected} contradicts the value {value:g}",
                    "detected",
                    patient_id,
                )
        if value is None and detected is None and not cancelled:
            return Rejection.of(
                RejectReason.MISSING_VALUE,
                "MRD needs a value or a detected flag",
                "value",
                patient_id,
            )
    elif value is None and not cancelled:
        return Rejection.of(
            RejectReason.MISSING_VALUE,
            f"{analyte.value} needs a value unless cancelled",
            "value",
            patient_id,
        )

    comparator = result.comparator if value is not None else None
    unit = CANONICAL_UNIT[analyte]
    if (
        analyte is result.analyte
        and value is result.value
        and comparator is result.comparator
        and unit == result.unit
        and detected is result.detected
    ):
        return result  # already normalised (a listener's output): no copy
    return result.model_copy(
        update={
            "analyte": analyte,
            "value": value,
            "comparator": comparator,
            "unit": unit,
            "detected": detected,
        }
    )


# --- MRD reporting forms (docs/clinical-spec.md §5) -------------------------------------------

#: SNOMED CT qualifier values that state an MRD finding.
SNOMED_FINDINGS: dict[str, bool] = {
    "260373001": True,  # Detected (qualifier value)
    "10828004": True,  # Positive (qualifier value)
    "260415000": False,  # Not detected (qualifier value)
    "260385009": False,  # Negative (qualifier value)
}

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻−–", "0123456789---")
_NEGATIVE = re.compile(
    r"\bnot\s+detect(?:ed|able)\b|\bundetect(?:ed|able)\b|\bnone\s+detected\b"
    r"|\bno\s+(?:evidence\s+of\s+)?(?:mrd|residual\s+disease)\b|\bnegative\b|\bneg\b"
)
_POSITIVE = re.compile(
    r"\bdetect(?:ed|able)\b|\bpositive\b|\bpos\b|\bnot\s+quantifiable\b"
    r"|\bbelow\s+(?:the\s+)?(?:loq|limit\s+of\s+quantification|quantification\s+limit)\b"
)
_SENSITIVITY_KEYWORD = re.compile(r"sensitivity|\blod\b|limit\s+of\s+detection")
#: "not detected at 10^-4": for a negative finding, the level it was sought at is the sensitivity
#: (for a positive one, "detected at 10^-3" is the disease level, never read as sensitivity).
_NEGATIVE_AT = re.compile(r"(?:detect(?:ed|able)|negative|\bneg)\s+at\b(?:\s+(?:a\s+)?level\s+of)?")
_SENSITIVITY_FORMS = (
    (
        re.compile(
            r"^\D{0,25}?\b(?:1(?:\.0+)?\s*[x×*]\s*)?10\s*(?:\^|\*\*|\*|e)?\s*-\s*(\d{1,2})\b"
        ),
        "exponent",
    ),
    (re.compile(r"^\D{0,25}?\b1(?:\.0*)?\s*e\s*-\s*0*(\d{1,2})\b"), "exponent"),
    (re.compile(r"^\D{0,25}?(\d*\.\d+|\d+)\s*%"), "percent"),
)
_METHODS: tuple[tuple[re.Pattern[str], MrdMethod], ...] = (
    (re.compile(r"\bflow\b|cytometr|\bfcm\b|\bmfc\b"), MrdMethod.FLOW),
    (re.compile(r"\bngs\b|sequencing|clonoseq|\bhts\b"), MrdMethod.NGS),
    (re.compile(r"\bpcr\b|\bqpcr\b|\brq-pcr\b|polymerase"), MrdMethod.PCR),
)


@dataclass(frozen=True, slots=True)
class MrdFinding:
    """A qualitative MRD result read from text: detected or not, and the assay's sensitivity."""

    detected: bool
    sensitivity: float | None = None


def mrd_from_text(text: str) -> MrdFinding | None:
    """Read "not detected", "negative", "detected, not quantifiable", "detected below LOQ",
    "positive" (and "... at a sensitivity of 10^-4") from free text.

    ``None`` when the text states neither, or both (e.g. "negative for CD19, MRD detected"):
    an ambiguous finding is never guessed.
    """
    lowered = " ".join(text.translate(_SUPERSCRIPTS).lower().split())
    remainder, negatives = _NEGATIVE.subn(" ", lowered)
    positive = _POSITIVE.search(remainder) is not None
    if (negatives > 0) == positive:
        return None
    return MrdFinding(
        detected=positive, sensitivity=sensitivity_from_text(lowered, negative=not positive)
    )


def sensitivity_from_text(text: str, *, negative: bool = False) -> float | None:
    """Sensitivity from text: "sensitivity 10^-4", "of 1e-5", "LOD 0.01 %", "1x10^-6" → 1e-4,
    1e-5, 1e-4, 1e-6; for a ``negative`` finding also "not detected at 10^-4"."""
    lowered = text.translate(_SUPERSCRIPTS).lower()
    keyword = _SENSITIVITY_KEYWORD.search(lowered)
    if keyword is None and negative:
        keyword = _NEGATIVE_AT.search(lowered)
    if keyword is None:
        return None
    tail = lowered[keyword.end() :]
    for pattern, form in _SENSITIVITY_FORMS:
        match = pattern.search(tail)
        if match is None:
            continue
        if form == "exponent":
            exponent = int(match.group(1))
            return 10.0**-exponent if 1 <= exponent <= 9 else None
        percent = float(match.group(1))
        return percent / 100 if 0 < percent <= 100 else None
    return None


def mrd_method_from_text(text: str | None) -> MrdMethod | None:
    """Flow cytometry, NGS or (q)PCR named in a method text (HL7 OBX-17, FHIR ``method``)."""
    if not text:
        return None
    lowered = text.lower()
    found = {method for pattern, method in _METHODS if pattern.search(lowered)}
    return found.pop() if len(found) == 1 else None
