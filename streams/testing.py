"""Test tools shipped with the package: a patient timeline builder and a runner.

    events = (
        Timeline("P1").infusion(day=0)
        .anc(day=3, per_ul=300).anc(day=10, per_ul=200)
        .events
    )
    alerts = run(events)

Days are relative to the infusion date (day 0 = ``DAY0``); ``hour`` sets the time of day.
Values are in canonical units (the names say which), so tests read like the case they describe.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any, Self

from schemas.alert import AlertEvent
from schemas.clinical import ClinicalEvent, Infusion
from schemas.lab_result import LabResult
from schemas.vocab import (
    CANONICAL_UNIT,
    AlertAction,
    Analyte,
    ClinicalEventKind,
    CostimulatoryDomain,
    MrdMethod,
    ResultStatus,
    RiskFactor,
    RuleName,
)
from streams.core.engine import PatientEvent, apply_all, tick
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.core.state import PatientState

DAY0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def at_day(day: float, hour: int = 8) -> datetime:
    """Collection time on ``day`` (relative to ``DAY0``'s date) at ``hour`` UTC."""
    return DAY0.replace(hour=hour) + timedelta(days=day)


@dataclass
class Timeline:
    """Builds one patient's wire records in the order they are added."""

    patient_id: str = "P1"
    events: list[PatientEvent] = field(default_factory=list)
    _accession: int = 0

    def infusion(
        self,
        day: float = 0,
        *,
        costim: str = "4-1BB",
        prior_hct: bool = False,
        hct_eligible: bool | None = True,
        risk_factors: Iterable[str] = (),
    ) -> Self:
        self.events.append(
            Infusion(
                patient_id=self.patient_id,
                infused_at=DAY0 + timedelta(days=day),
                product="tisagenlecleucel",
                costimulatory_domain=CostimulatoryDomain(costim),
                prior_hct=prior_hct,
                hct_eligible=hct_eligible,
                risk_factors=tuple(RiskFactor(f) for f in risk_factors),
            )
        )
        return self

    def event(self, kind: str, day: float, hour: int = 9, detail: str | None = None) -> Self:
        self.events.append(
            ClinicalEvent(
                patient_id=self.patient_id,
                kind=ClinicalEventKind(kind),
                at=at_day(day, hour),
                detail=detail,
            )
        )
        return self

    def lab(
        self,
        analyte: Analyte | str,
        day: float,
        value: float | None,
        *,
        hour: int = 8,
        status: str = "final",
        accession: str | None = None,
        **extra: Any,
    ) -> Self:
        if accession is None:
            self._accession += 1
            accession = f"{self.patient_id}-A{self._accession}"
        analyte = Analyte(analyte)
        self.events.append(
            LabResult(
                patient_id=self.patient_id,
                analyte=analyte,
                value=value,
                unit=extra.pop("unit", None) or _unit(analyte),
                collected_at=at_day(day, hour),
                resulted_at=at_day(day, hour) + timedelta(hours=4),
                status=ResultStatus(status),
                accession=accession,
                source=extra.pop("source", "lab-main"),
                **extra,
            )
        )
        return self

    def anc(self, day: float, per_ul: float, **kw: Any) -> Self:
        return self.lab(Analyte.ANC, day, per_ul, **kw)

    def platelets(self, day: float, k_per_ul: float, **kw: Any) -> Self:
        return self.lab(Analyte.PLATELETS, day, k_per_ul, **kw)

    def igg(self, day: float, mg_dl: float, **kw: Any) -> Self:
        return self.lab(Analyte.IGG, day, mg_dl, **kw)

    def cd19_pct(self, day: float, pct: float, **kw: Any) -> Self:
        return self.lab(Analyte.CD19_PCT, day, pct, **kw)

    def cd19_abs(self, day: float, per_ul: float, **kw: Any) -> Self:
        return self.lab(Analyte.CD19_ABS, day, per_ul, **kw)

    def ferritin(self, day: float, ng_ml: float, **kw: Any) -> Self:
        return self.lab(Analyte.FERRITIN, day, ng_ml, **kw)

    def fibrinogen(self, day: float, mg_dl: float, **kw: Any) -> Self:
        return self.lab(Analyte.FIBRINOGEN, day, mg_dl, **kw)

    def mrd(
        self,
        day: float,
        fraction: float | None,
        *,
        detected: bool,
        method: str = "ngs",
        sensitivity: float | None = None,
        **kw: Any,
    ) -> Self:
        return self.lab(
            Analyte.MRD,
            day,
            fraction,
            detected=detected,
            method=MrdMethod(method),
            sensitivity=sensitivity,
            **kw,
        )

    def last_accession(self) -> str:
        return f"{self.patient_id}-A{self._accession}"


def _unit(analyte: Analyte) -> str:
    return CANONICAL_UNIT[analyte]


def run(
    events: Iterable[PatientEvent],
    policy: Policy = DEFAULT_POLICY,
    now: datetime | None = None,
    *,
    apart: bool = False,
) -> list[AlertEvent]:
    """Run records through the engine as a driver would (one state per patient; consecutive
    records of one patient applied together by ``apply_all``), then ``tick(now)`` if given.

    ``apart=True`` applies every record on its own, as if each came in a message of its own
    (a cancellation that follows its result later, the other half of a specimen sent later).
    """
    states: dict[str, PatientState] = {}
    alerts: list[AlertEvent] = []
    batches = (
        [(event.patient_id, [event]) for event in events]
        if apart
        else [(pid, list(group)) for pid, group in groupby(events, key=lambda e: e.patient_id)]
    )
    for patient_id, batch in batches:
        state = states.setdefault(patient_id, PatientState.new(patient_id))
        for result in apply_all(state, batch, policy):
            alerts.extend(result.alerts)
    if now is not None:
        for state in states.values():
            alerts.extend(tick(state, now, policy)[1])
    return alerts


def actions(
    alerts: Iterable[AlertEvent], rule: RuleName | None = None
) -> list[tuple[str, str, str]]:
    """(rule, action, severity) triples, optionally for one rule: the shape most tests assert."""
    return [
        (a.rule.value, a.action.value, a.severity.value)
        for a in alerts
        if rule is None or a.rule is rule
    ]


def active(alerts: Iterable[AlertEvent]) -> dict[str, AlertEvent]:
    """Alerts still open after these events, by alert id (last event per alert wins)."""
    last: dict[str, AlertEvent] = {}
    for alert in alerts:
        last[alert.alert_id] = alert
    return {i: a for i, a in last.items() if a.action in (AlertAction.RAISED, AlertAction.UPDATED)}
