"""Wire contracts of CAR-T Watch (pydantic v2). JSON Schemas are generated into ``json/``."""

from schemas.alert import AlertEvent, Evidence
from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import DeadLetter, RejectDetail
from schemas.lab_result import LabResult
from schemas.records import Rejection, WireRecord, decode_record

__all__ = [
    "AlertEvent",
    "ClinicalEvent",
    "DeadLetter",
    "Evidence",
    "Infusion",
    "LabResult",
    "RejectDetail",
    "Rejection",
    "WireRecord",
    "decode_record",
]
