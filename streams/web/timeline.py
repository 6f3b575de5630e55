"""A patient's course as the timeline page draws it: result versions, alert bands, evidence.

Pure functions over the read model's rows. Nothing is hidden: a corrected or cancelled value is
kept and marked (struck through on the page); only which version *stands* is decided here,
following docs/clinical-spec.md §0 ("Corrections and cancellations", "Preliminary results") in the
order the lab sent them (one patient's results share a partition, so offset order is send order).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum

from schemas.vocab import ResultStatus, RuleName
from streams.web.db import LabRow
from streams.web.queries import AlertDetail, day_number


class Version(StrEnum):
    CURRENT = "current"
    PRELIMINARY = "preliminary"
    #: replaced by a corrected result of the same accession
    CORRECTED = "corrected"
    #: removed by a cancellation of the same accession
    CANCELLED = "cancelled"
    #: a preliminary (or repeated final) replaced by a later report of the same accession
    REPLACED = "replaced"
    #: a preliminary that arrived after the final of its accession (ignored by the rules)
    IGNORED = "ignored"
    #: the cancellation record itself (carries no value)
    CANCELLATION = "cancellation"


#: Versions the page shows struck through.
STRUCK = frozenset({Version.CORRECTED, Version.CANCELLED, Version.REPLACED, Version.IGNORED})


@dataclass(frozen=True)
class LabPoint:
    row: LabRow
    version: Version
    day: int | None
    #: rules whose alerts cite this result as evidence
    cited_by: tuple[str, ...] = ()

    @property
    def struck(self) -> bool:
        return self.version in STRUCK

    @property
    def plotted(self) -> bool:
        return self.version is not Version.CANCELLATION


def versions(labs: Sequence[LabRow]) -> dict[int, Version]:
    """Each row's standing, ``labs`` in the order they were sent (row id → version)."""
    marks: dict[int, Version] = {}
    standing: dict[tuple[str, str], LabRow] = {}
    for row in labs:
        if row.accession is None:  # nothing to correct or cancel: it stands alone
            marks[row.id] = _own_version(row)
            continue
        key = (row.analyte, row.accession)
        before = standing.get(key)
        if row.status == ResultStatus.CANCELLED:
            marks[row.id] = Version.CANCELLATION
            if before is not None:
                marks[before.id] = Version.CANCELLED
                del standing[key]
            continue
        if (
            row.status == ResultStatus.PRELIMINARY
            and before is not None
            and before.status != ResultStatus.PRELIMINARY
        ):
            marks[row.id] = Version.IGNORED
            continue
        if before is not None:
            corrected = row.status == ResultStatus.CORRECTED
            marks[before.id] = Version.CORRECTED if corrected else Version.REPLACED
        marks[row.id] = _own_version(row)
        standing[key] = row
    return marks


def _own_version(row: LabRow) -> Version:
    if row.status == ResultStatus.CANCELLED:
        return Version.CANCELLATION
    if row.status == ResultStatus.PRELIMINARY:
        return Version.PRELIMINARY
    return Version.CURRENT


EvidenceKey = tuple[str, str, str]


def evidence_key(analyte: str, collected_at: datetime | str, accession: str | None) -> EvidenceKey:
    """How an alert's evidence item is matched with a stored result."""
    moment = collected_at if isinstance(collected_at, datetime) else _parse(collected_at)
    return (analyte, moment.astimezone(UTC).isoformat(), accession or "")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def cited(alerts: Iterable[AlertDetail]) -> dict[EvidenceKey, set[str]]:
    """Evidence of every event of these alerts: result key → rules citing it."""
    out: dict[EvidenceKey, set[str]] = {}
    for detail in alerts:
        for event in detail.events:
            for item in event.payload.get("evidence", ()):
                key = evidence_key(item["analyte"], item["collected_at"], item.get("accession"))
                out.setdefault(key, set()).add(detail.alert.rule)
    return out


def lab_points(
    labs: Sequence[LabRow],
    alerts: Sequence[AlertDetail],
    infused_at: datetime | None,
    tz: tzinfo,
) -> list[LabPoint]:
    marks = versions(labs)
    citing = cited(alerts)
    points = []
    for row in labs:
        day = None if infused_at is None else day_number(row.collected_at, infused_at, tz)
        rules = citing.get(evidence_key(row.analyte, row.collected_at, row.accession), set())
        points.append(LabPoint(row, marks[row.id], day, tuple(sorted(rules))))
    return points


# -- alert bands ------------------------------------------------------------------------------

#: Panels an alert without evidence is drawn on (e.g. a monitoring gap).
RULE_ANALYTES: dict[str, tuple[str, ...]] = {
    RuleName.BCA_LOSS: ("cd19_pct", "cd19_abs"),
    RuleName.BCA_NOT_ESTABLISHED: ("cd19_pct", "cd19_abs"),
    RuleName.HYPOGAMMAGLOBULINEMIA: ("igg",),
    RuleName.PROLONGED_NEUTROPENIA: ("anc",),
    RuleName.IEC_HS: ("ferritin",),
    RuleName.MRD_POSITIVE: ("mrd",),
    RuleName.HCT_CONSOLIDATION: ("mrd", "cd19_pct"),
    RuleName.MONITORING_GAP: ("cd19_pct", "igg", "anc"),
}


@dataclass(frozen=True)
class Band:
    """One alert from raised to resolved (``end`` None: still open) on the panels it concerns."""

    alert_id: str
    rule: str
    severity: str
    status: str
    start: datetime
    end: datetime | None
    analytes: frozenset[str]


def bands(alerts: Iterable[AlertDetail]) -> list[Band]:
    out = []
    for detail in alerts:
        events = detail.events
        if not events:
            continue
        start = events[0].event_time
        closing = events[-1] if detail.alert.status != "open" else None
        end = None if closing is None else max(start, closing.event_time)
        analytes = {
            item["analyte"] for event in events for item in event.payload.get("evidence", ())
        }
        out.append(
            Band(
                detail.alert.alert_id,
                detail.alert.rule,
                detail.alert.severity,
                detail.alert.status,
                start,
                end,
                frozenset(analytes or RULE_ANALYTES.get(detail.alert.rule, ())),
            )
        )
    return out
