"""``lab_result`` wire record (DESIGN.md "Wire contracts")."""

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import PatientId, Timestamp, WireModel
from schemas.vocab import Analyte, MrdMethod, ResultStatus


class LabResult(WireModel):
    """One lab result. ``analyte`` or ``loinc`` identifies it; ingest normalises the unit.

    ``value`` is required except for qualitative MRD (``detected`` given) and cancellations.
    For MRD, ``value`` is a fraction once normalised and "not detected" is never turned into 0:
    ``detected`` carries the finding, ``sensitivity`` the assay's limit.
    """

    type: Literal["lab_result"] = "lab_result"
    patient_id: PatientId
    analyte: Analyte | None = None
    value: float | None = Field(default=None, allow_inf_nan=False)
    unit: str | None = None
    collected_at: Timestamp
    resulted_at: Timestamp | None = None
    status: ResultStatus = ResultStatus.FINAL
    accession: str | None = None
    source: str | None = None
    loinc: str | None = None
    method: MrdMethod | None = None
    detected: bool | None = None
    sensitivity: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_value_rules(self) -> Self:
        if self.analyte is None and not self.loinc:
            raise PydanticCustomError("missing_field", "analyte or loinc is required")
        if self.value is not None and self.value < 0:
            raise PydanticCustomError("negative_value", "value must not be negative")
        qualitative_mrd = self.analyte in (Analyte.MRD, None) and self.detected is not None
        if self.value is None and not qualitative_mrd and self.status is not ResultStatus.CANCELLED:
            raise PydanticCustomError("missing_value", "value is required for this result")
        return self
