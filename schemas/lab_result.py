"""``lab_result`` wire record (docs/architecture.md and the JSON Schemas)."""

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.base import PatientId, Timestamp, WireModel
from schemas.vocab import Analyte, Comparator, MrdMethod, ResultStatus

#: A JSON number, never text or a boolean (docs/clinical-spec.md 0, "Numbers are numbers"): strict
#: mode accepts ints and floats only, so ``"250"`` is ``invalid_value`` instead of coerced.
WireNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class LabResult(WireModel):
    """One lab result. ``analyte`` or ``loinc`` identifies it; ingest normalises the unit.

    ``value`` is required except for qualitative MRD (``detected`` given) and cancellations.
    A censored result keeps its ``comparator`` and the limit as ``value``.
    For MRD, ``value`` is a fraction once normalised and "not detected" is never turned into 0:
    ``detected`` carries the finding, ``sensitivity`` the assay's limit.
    """

    type: Literal["lab_result"] = "lab_result"
    patient_id: PatientId
    analyte: Analyte | None = None
    value: WireNumber | None = None
    #: censored result (``<``, ``<=``, ``>``, ``>=``): ``value`` is the assay's limit
    comparator: Comparator | None = None
    unit: str | None = None
    collected_at: Timestamp
    resulted_at: Timestamp | None = None
    status: ResultStatus = ResultStatus.FINAL
    accession: str | None = None
    source: str | None = None
    loinc: str | None = None
    method: MrdMethod | None = None
    detected: Annotated[bool, Field(strict=True)] | None = None
    sensitivity: Annotated[WireNumber, Field(gt=0, le=1)] | None = None

    @model_validator(mode="after")
    def _check_value_rules(self) -> Self:
        if self.analyte is None and not self.loinc:
            raise PydanticCustomError("missing_field", "analyte or loinc is required")
        if self.value is not None and self.value < 0:
            raise PydanticCustomError("negative_value", "value must not be negative")
        qualitative_mrd = self.analyte in (Analyte.MRD, None) and self.detected is not None
        if self.value is None and not qualitative_mrd and self.status is not ResultStatus.CANCELLED:
            raise PydanticCustomError("missing_value", "value is required for this result")
        if self.comparator is not None and self.value is None:
            raise PydanticCustomError("missing_value", "a comparator needs the limit as value")
        return self
