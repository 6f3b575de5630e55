"""LOINC code → ``Analyte`` (the wire contracts in schemas/: ``loinc`` may stand in for ``analyte``).

Source: LOINC (Regenstrief Institute, https://loinc.org), long common names written next to each
code in ``LOINC_TABLE``. They were checked against two published copies of LOINC's names: the
Swiss eHealth Connector's LOINC enumerations (github.com/project-husky/husky, e.g.
``CD19_CELLS_VOLUME_IN_BLOOD("8116-6", "CD19 cells [#/volume] in Blood")`` and
``CD19_CELLS100_CELLS_IN_BLOOD("8117-4", "CD19 cells/100 cells in Blood")``) and the FHIR
implementation guides' lab value sets (HL7 mCODE, CIBMTR reporting IG: 26464-8, 26474-7,
26499-4, 26515-7, 718-7, 731-0 with the names below). That check found the CD19 pair swapped
in the first release (8116-6 is the absolute count, 8117-4 the percentage).
A wrong mapping is a clinical hazard — a percentage read as an absolute count, or a morphology
finding read as a cell count — so the table holds only codes whose meaning is certain, and every
code maps to exactly one analyte whose canonical unit has the same *kind of property* (a count
per volume, a mass concentration, an enzyme activity, a fraction). Codes for the same analyte
in other properties are deliberately absent, e.g. 770-8 "Neutrophils/100 leukocytes in Blood"
(a percentage, not ANC), 11156-7 / 11125-2 (leukocyte / platelet *morphology findings*, which one
feed in the test corpus misuses for counts), 20509-6 (hemoglobin by calculation).

MRD has no entry: there is no LOINC code we are sure every laboratory uses for B-ALL MRD by flow,
qPCR or NGS. MRD arrives through an interface's local codes (``Hl7Config.local_codes``) or the
wire contract's ``analyte`` field.

``resolve_codes`` applies the table and a feed's local codes to all codes a result carries (HL7
OBX-3 triplets, FHIR ``code.coding``) and refuses codes that disagree.

To add a code: quote its LOINC long common name, check its property (``PrThr``/``NCnc``/
``MCnc``/``CCnc``/``NFr``...) against the analyte's canonical unit, add a test.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from schemas.vocab import Analyte

#: code → (analyte, LOINC long common name). The names are LOINC's own; see the module docstring
#: for the sources they were checked against.
LOINC_TABLE: Final[dict[str, tuple[Analyte, str]]] = {
    "751-8": (Analyte.ANC, "Neutrophils [#/volume] in Blood by Automated count"),
    "26499-4": (Analyte.ANC, "Neutrophils [#/volume] in Blood"),
    "731-0": (Analyte.ALC, "Lymphocytes [#/volume] in Blood by Automated count"),
    "26474-7": (Analyte.ALC, "Lymphocytes [#/volume] in Blood"),
    "6690-2": (Analyte.WBC, "Leukocytes [#/volume] in Blood by Automated count"),
    "26464-8": (Analyte.WBC, "Leukocytes [#/volume] in Blood"),
    "777-3": (Analyte.PLATELETS, "Platelets [#/volume] in Blood by Automated count"),
    "26515-7": (Analyte.PLATELETS, "Platelets [#/volume] in Blood"),
    "718-7": (Analyte.HEMOGLOBIN, "Hemoglobin [Mass/volume] in Blood"),
    # The first release had these two swapped (8116-6 as the percentage): 8116-6 is the count,
    # 8117-4 the percentage. Either way the unit decides (streams.ingest.normalise).
    "8116-6": (Analyte.CD19_ABS, "CD19 cells [#/volume] in Blood"),
    "8117-4": (Analyte.CD19_PCT, "CD19 cells/100 cells in Blood"),
    "2465-3": (Analyte.IGG, "IgG [Mass/volume] in Serum or Plasma"),
    "2276-4": (Analyte.FERRITIN, "Ferritin [Mass/volume] in Serum or Plasma"),
    "3255-7": (
        Analyte.FIBRINOGEN,
        "Fibrinogen [Mass/volume] in Platelet poor plasma by Coagulation assay",
    ),
    "1742-6": (
        Analyte.ALT,
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    ),
    "1920-8": (
        Analyte.AST,
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    ),
    "2532-0": (
        Analyte.LDH,
        "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
    ),
    "14804-9": (
        Analyte.LDH,
        "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma by Lactate to "
        "pyruvate reaction",
    ),
    "1975-2": (Analyte.BILIRUBIN, "Bilirubin.total [Mass/volume] in Serum or Plasma"),
    # Quoted from the FHIR R4 specification's own example (diagnosticreport-example-ghp, in
    # tests/data/external); the unit whitelist converts µmol/L to mg/dL.
    "14631-6": (Analyte.BILIRUBIN, "Bilirubin.total [Moles/volume] in Serum or Plasma"),
    "2571-8": (Analyte.TRIGLYCERIDES, "Triglyceride [Mass/volume] in Serum or Plasma"),
    "1988-5": (Analyte.CRP, "C reactive protein [Mass/volume] in Serum or Plasma"),
}

LOINC_TO_ANALYTE: Final[dict[str, Analyte]] = {
    code: analyte for code, (analyte, _) in LOINC_TABLE.items()
}

#: Spellings of the LOINC coding system: HL7 v2 table 0396 ``LN``, its OID and the FHIR URI.
LOINC_SYSTEMS: Final = frozenset({"ln", "loinc", "2.16.840.1.113883.6.1", "http://loinc.org"})

_LOINC_FORMAT = re.compile(r"^(\d{1,7})-(\d)$")


def analyte_for_loinc(code: str | None) -> Analyte | None:
    """The analyte a LOINC code stands for, or ``None`` (unknown or not ours)."""
    if code is None:
        return None
    return LOINC_TO_ANALYTE.get(code.strip())


def is_loinc_system(system: str | None) -> bool:
    """Whether a coding-system name (HL7 CWE-3/-6, FHIR ``Coding.system``) means LOINC."""
    return system is not None and system.strip().lower().rstrip("/") in LOINC_SYSTEMS


def has_valid_check_digit(code: str) -> bool:
    """LOINC's mod-10 check digit (the digit after the hyphen), as LOINC's users' guide defines.

    Used to tell a LOINC-shaped string from a typo; never to treat a code from another coding
    system as LOINC.
    """
    match = _LOINC_FORMAT.match(code.strip())
    if match is None:
        return False
    digits, check = match.group(1), int(match.group(2))
    total = 0
    # Luhn-style: from the rightmost digit of the body, double every other digit.
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10 == check


@dataclass(frozen=True, slots=True)
class SentCode:
    """One test code as a message carries it: the code, whether its coding system is LOINC,
    and the keys under which a feed's ``local_codes`` may list it (``code``, ``system|code``)."""

    code: str
    is_loinc: bool
    local_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CodeMatch:
    """What a result's codes resolve to. ``conflict`` explains codes that disagree."""

    analyte: Analyte | None
    loinc: str | None
    local: str | None
    conflict: str | None = None


def resolve_codes(codes: Sequence[SentCode], local_codes: Mapping[str, Analyte]) -> CodeMatch:
    """Resolve all codes of one result (HL7 OBX-3 triplets, FHIR ``code.coding``).

    Our LOINC table first; a feed's ``local_codes`` for the other codes and for LOINC codes the
    table lacks. Every code that maps must map to the same analyte, else ``conflict``.
    """
    loinc_codes = [sent.code for sent in codes if sent.is_loinc]
    found: list[tuple[str, Analyte]] = []
    from_table = [(c, a) for c in loinc_codes if (a := analyte_for_loinc(c)) is not None]
    found.extend((f"LOINC {code}", analyte) for code, analyte in from_table)
    local: str | None = None
    for sent in codes:
        if sent.is_loinc and analyte_for_loinc(sent.code) is not None:
            continue
        key = next((k for k in sent.local_keys if k in local_codes), None)
        if key is not None:
            local = local or key
            found.append((f"local code {key}", local_codes[key]))
    analytes = {analyte for _, analyte in found}
    loinc = from_table[0][0] if from_table else (loinc_codes[0] if loinc_codes else None)
    if len(analytes) > 1:
        shown = ", ".join(f"{name} ({analyte.value})" for name, analyte in found)
        return CodeMatch(None, loinc, local, f"codes disagree: {shown}")
    return CodeMatch(analytes.pop() if analytes else None, loinc, local)
