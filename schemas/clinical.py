"""``infusion`` and ``clinical_event`` wire records (docs/clinical-spec.md section 0)."""

from typing import Annotated, Literal

from pydantic import StringConstraints

from schemas.base import PatientId, Timestamp, WireModel
from schemas.vocab import ClinicalEventKind, CostimulatoryDomain, RiskFactor


class Infusion(WireModel):
    """Enrols a patient: ``infused_at`` is day 0. A later record replaces these fields.

    ``hct_eligible`` absent means "eligible unless known otherwise" (docs/clinical-spec.md 6).
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
    """A clinical or course event (docs/clinical-spec.md 0 "Course events"): IVIG dose, reinfusion,
    CRS resolved, HCT performed, relapse (``detail`` such as ``cd19_negative``), end of follow-up.
    """

    type: Literal["clinical_event"] = "clinical_event"
    patient_id: PatientId
    kind: ClinicalEventKind
    at: Timestamp
    #: free text qualifying the event, shown in alert texts (e.g. ``cd19_negative``); no PHI
    detail: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
        | None
    ) = None
