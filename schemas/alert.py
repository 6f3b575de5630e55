"""``AlertEvent``: what subscribers receive on ``carwatch.alerts`` (docs/clinical-spec.md "Common definitions")."""

from typing import Annotated, Literal

from pydantic import Field

from schemas.base import PatientId, Timestamp, WireModel
from schemas.vocab import (
    AlertAction,
    Analyte,
    Comparator,
    MrdMethod,
    ResultStatus,
    RiskFactor,
    RuleName,
    Severity,
)


class Evidence(WireModel):
    """One result an alert rests on (or shows as context), as the lab reported it (canonical
    unit). A censored result keeps its ``comparator``: ``value`` is then the assay's limit."""

    kind: Literal["result"] = "result"
    analyte: Analyte
    value: float | None
    comparator: Comparator | None = None
    unit: str
    collected_at: Timestamp
    accession: str | None = None
    status: ResultStatus = ResultStatus.FINAL
    day: int | None = None
    detected: bool | None = None
    method: MrdMethod | None = None
    sensitivity: float | None = None
    note: str | None = None


class RiskFactorNote(WireModel):
    """A risk factor recorded on the infusion record, shown with an alert (never alerting alone).

    ``table_1`` marks the factors of Westhafen 2025 Table 1 (risk factors for CAR T-cell failure).
    """

    kind: Literal["risk_factor"] = "risk_factor"
    risk_factor: RiskFactor
    label: str
    table_1: bool


Context = Annotated[Evidence | RiskFactorNote, Field(discriminator="kind")]


class AlertEvent(WireModel):
    """One lifecycle event of one alert.

    ``alert_id`` is fixed when the alert is raised: a hash of patient id, rule, episode start and
    the settings the rule reads, kept for every later event of that alert. ``event_id`` is unique
    per event (alert id and sequence number), so a subscriber can drop a re-delivered event.
    ``event_time`` is the collection time of the result that triggered the event; ``decided_at``
    the moment of decision (wall clock in the worker, the record's ``resulted_at`` in replay).
    """

    alert_id: str
    event_id: str
    patient_id: PatientId
    rule: RuleName
    severity: Severity
    action: AlertAction
    event_time: Timestamp
    decided_at: Timestamp
    policy_version: str
    episode_start: Timestamp
    day: int | None
    summary: str
    recommendation: str
    threshold: str
    evidence: tuple[Evidence, ...]
    context: tuple[Context, ...] = ()
    references: tuple[str, ...]
