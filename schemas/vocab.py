"""Controlled vocabularies of the wire contracts (docs/architecture.md and the JSON Schemas, docs/clinical-spec.md).

Every value here is a bounded enum: safe as a Prometheus label, stable on the wire.
"""

from enum import StrEnum


class Analyte(StrEnum):
    """Analytes CAR-T Watch reads, each with one canonical unit (see ``CANONICAL_UNIT``)."""

    CD19_PCT = "cd19_pct"
    CD19_ABS = "cd19_abs"
    IGG = "igg"
    ANC = "anc"
    FERRITIN = "ferritin"
    MRD = "mrd"
    ALC = "alc"
    WBC = "wbc"
    PLATELETS = "platelets"
    HEMOGLOBIN = "hemoglobin"
    FIBRINOGEN = "fibrinogen"
    ALT = "alt"
    AST = "ast"
    LDH = "ldh"
    BILIRUBIN = "bilirubin"
    TRIGLYCERIDES = "triglycerides"
    CRP = "crp"


CANONICAL_UNIT: dict[Analyte, str] = {
    Analyte.CD19_PCT: "%",
    Analyte.CD19_ABS: "/uL",
    Analyte.IGG: "mg/dL",
    Analyte.ANC: "/uL",
    Analyte.FERRITIN: "ng/mL",
    Analyte.MRD: "1",
    Analyte.ALC: "/uL",
    Analyte.WBC: "/uL",
    Analyte.PLATELETS: "10*3/uL",
    Analyte.HEMOGLOBIN: "g/dL",
    Analyte.FIBRINOGEN: "mg/dL",
    Analyte.ALT: "U/L",
    Analyte.AST: "U/L",
    Analyte.LDH: "U/L",
    Analyte.BILIRUBIN: "mg/dL",
    Analyte.TRIGLYCERIDES: "mg/dL",
    Analyte.CRP: "mg/L",
}


class ResultStatus(StrEnum):
    PRELIMINARY = "preliminary"
    FINAL = "final"
    CORRECTED = "corrected"
    CANCELLED = "cancelled"


class MrdMethod(StrEnum):
    FLOW = "flow"
    NGS = "ngs"
    PCR = "pcr"


class CostimulatoryDomain(StrEnum):
    FOUR_1BB = "4-1BB"
    CD28 = "CD28"


class RiskFactor(StrEnum):
    """docs/clinical-spec.md section 6 and "Risk context" (Westhafen 2025 Table 1)."""

    DONOR_AVAILABLE_WISHES_HCT = "donor_available_wishes_hct"
    HIGH_DISEASE_BURDEN = "high_disease_burden"
    BLINATUMOMAB_FAILURE = "blinatumomab_failure"
    REFRACTORY_DISEASE = "refractory_disease"
    KMT2A_REARRANGED = "kmt2a_rearranged"
    TP53_MUTATED = "tp53_mutated"
    CARDIAC_PULMONARY_COMORBIDITY = "cardiac_pulmonary_comorbidity"
    LOW_CELL_DOSE = "low_cell_dose"
    EARLY_POST_HCT_RELAPSE = "early_post_hct_relapse"
    SUBOPTIMAL_FLUDARABINE = "suboptimal_fludarabine"


class ClinicalEventKind(StrEnum):
    """Clinical and course events the rules read (docs/clinical-spec.md sections 0, 2 and 4)."""

    IVIG_GIVEN = "ivig_given"
    REINFUSION = "reinfusion"
    CRS_RESOLVED = "crs_resolved"
    #: consolidative (or later allogeneic) HCT performed: no more HCT advice or B-cell alerts
    HCT_PERFORMED = "hct_performed"
    #: morphological relapse (``detail`` e.g. ``cd19_negative``, ``lineage_switch``)
    RELAPSE = "relapse"
    #: death, transfer or withdrawal: every open alert resolves, later results not monitored
    END_OF_FOLLOW_UP = "end_of_follow_up"


class RuleName(StrEnum):
    BCA_LOSS = "bca_loss"
    BCA_NOT_ESTABLISHED = "bca_not_established"
    HYPOGAMMAGLOBULINEMIA = "hypogammaglobulinemia"
    PROLONGED_NEUTROPENIA = "prolonged_neutropenia"
    IEC_HS = "iec_hs"
    MRD_POSITIVE = "mrd_positive"
    HCT_CONSOLIDATION = "hct_consolidation"
    MONITORING_GAP = "monitoring_gap"


class Comparator(StrEnum):
    """Censored result: the true value is beyond the assay's limit, which ``value`` carries."""

    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertAction(StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    RESOLVED = "resolved"
    RETRACTED = "retracted"


class RejectReason(StrEnum):
    """Why a record went to the dead-letter topic. Machine-readable; a metric label."""

    MALFORMED_JSON = "malformed_json"
    #: a number or boolean sent as text (``"250"``) or of the wrong JSON type: never coerced
    INVALID_VALUE = "invalid_value"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    NAIVE_DATETIME = "naive_datetime"
    UNKNOWN_ANALYTE = "unknown_analyte"
    UNKNOWN_VOCABULARY = "unknown_vocabulary"
    MISSING_VALUE = "missing_value"
    NEGATIVE_VALUE = "negative_value"
    UNKNOWN_UNIT = "unknown_unit"
    IMPLAUSIBLE_VALUE = "implausible_value"
    MALFORMED_HL7 = "malformed_hl7"
    MALFORMED_FHIR = "malformed_fhir"
    UNSUPPORTED_MESSAGE = "unsupported_message"
    MISSING_PATIENT_ID = "missing_patient_id"
    INVALID_TIMESTAMP = "invalid_timestamp"
    #: the worker: the patient's stored state is in a format this release does not read
    #: (a release that changed it needs a rebuild: docs/deploy.md "Upgrading")
    STATE_UNREADABLE = "state_unreadable"
    #: the worker: the engine raised on this record (a defect; the worker log has the trace)
    PROCESSING_ERROR = "processing_error"


class Outcome(StrEnum):
    """What happened to one input record. A metric label (``carwatch_results_total``)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNMAPPED = "unmapped"
    NOT_ENROLLED = "not_enrolled"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    UNKNOWN_ACCESSION = "unknown_accession"
    #: a record for a patient whose follow-up ended (``end_of_follow_up``): kept out of the rules
    NOT_MONITORED = "not_monitored"
    #: collected before the patient's retained history (pruned, settled): not re-evaluated
    OUTSIDE_WINDOW = "outside_window"
