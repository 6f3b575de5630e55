"""Wire contracts of CAR-T Watch (pydantic v2). JSON Schemas are generated into ``json/``."""

from schemas.ack import AckAction, AckEvent, OverrideReason
from schemas.alert import AlertEvent, Evidence
from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import DeadLetter, RejectDetail
from schemas.lab_result import LabResult
from schemas.records import Rejection, WireRecord, decode_record

__all__ = [
    "AckAction",
    "AckEvent",
    "AlertEvent",
    "ClinicalEvent",
    "DeadLetter",
    "Evidence",
    "Infusion",
    "LabResult",
    "OverrideReason",
    "RejectDetail",
    "Rejection",
    "WireRecord",
    "decode_record",
]
