"""``infusion`` and ``clinical_event`` wire records (DESIGN.md, clinical-rules.md section 0)."""

from typing import Literal

from schemas.base import PatientId, Timestamp, WireModel
from schemas.vocab import ClinicalEventKind, CostimulatoryDomain, RiskFactor


class Infusion(WireModel):
    """Enrols a patient: ``infused_at`` is day 0. A later record replaces these fields.

    ``hct_eligible`` absent means "eligible unless known otherwise" (clinical-rules.md 6).
    """

    type: Literal["infusion"] = "infusion"
    patient_id: PatientId
    infused_at: Timestamp
    product: str | None = None
    costimulatory_domain: CostimulatoryDomain | None = None
    prior_hct: bool = False
    hct_eligible: bool | None = None
    risk_factors: tuple[RiskFactor, ...] = ()


class ClinicalEvent(WireModel):
    """A clinical fact the rules read as context (IVIG dose, reinfusion, CRS resolved)."""

    type: Literal["clinical_event"] = "clinical_event"
    patient_id: PatientId
    kind: ClinicalEventKind
    at: Timestamp
