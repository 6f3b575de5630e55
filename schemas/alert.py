"""``AlertEvent``: what subscribers receive on ``carwatch.alerts`` (DESIGN.md "Alert event")."""

from schemas.base import PatientId, Timestamp, WireModel
from schemas.vocab import (
    AlertAction,
    Analyte,
    Comparator,
    MrdMethod,
    ResultStatus,
    RuleName,
    Severity,
)


class Evidence(WireModel):
    """One result an alert rests on, as the lab reported it (canonical unit)."""

    analyte: Analyte
    value: float | None
    #: censored result: the value is the assay's limit (shown as "< 100 /µL")
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


class AlertEvent(WireModel):
    """One lifecycle event of one alert.

    ``alert_id`` is a hash of patient id, rule, episode and policy version; ``event_id`` adds the
    action and its sequence number, so a subscriber can drop a re-delivered event by id.
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
    context: tuple[Evidence, ...] = ()
    references: tuple[str, ...]
