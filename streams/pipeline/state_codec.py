"""Compact, exact serialisation of ``PatientState`` for the Faust table (raw bytes values).

JSON arrays instead of objects, instants as epoch seconds (UTC), enums as their values, trailing
empty fields dropped, sources interned in a table: a year of follow-up stays well under 8 KB.
Every field round-trips exactly (``tests/unit/pipeline/test_state_codec.py``). Rule carries are
stored as the JSON-able form ``streams.core.carry`` gives them.

``FORMAT`` is bumped on any incompatible change -- including a change of a rule accumulator's
fields, which the carries store -- and a state in an unknown format is an error, never silently
reset. Format 2 (rev. 2 rules: stored alert ids, carries, gap records) does not read
format 1: upgrading a worker from the first release rebuilds its table from the input topics
under a new application id (docs/deploy.md "Upgrading").
"""

import json
from typing import Any

from schemas.vocab import (
    Analyte,
    ClinicalEventKind,
    CostimulatoryDomain,
    RiskFactor,
    RuleName,
    Severity,
)
from streams.core.carry import instant, result_from_row, result_row, timestamp
from streams.core.state import (
    AlertStatus,
    AnnouncedAlert,
    ClinicalEventRecord,
    Enrollment,
    GapRecord,
    PatientState,
)

FORMAT = 2


class StateFormatError(ValueError):
    """Bytes that are not a patient state this version can read."""


def _trim(row: list[Any]) -> list[Any]:
    while row and row[-1] in (None, [], ()):
        row.pop()
    return row


def _pad(row: list[Any], width: int) -> list[Any]:
    return row + [None] * (width - len(row))


def encode_state(state: PatientState) -> bytes:
    sources: list[str | None] = []
    index: dict[str | None, int] = {}

    def source_id(source: str | None) -> int:
        if source not in index:
            index[source] = len(sources)
            sources.append(source)
        return index[source]

    results = {
        analyte.value: [result_row(r, source_id) for r in history]
        for analyte, history in state.results.items()
        if history
    }
    e = state.enrollment
    document: dict[str, Any] = {
        "f": FORMAT,
        "p": state.patient_id,
        "e": None
        if e is None
        else _trim(
            [
                timestamp(e.infused_at),
                e.product,
                None if e.costimulatory_domain is None else e.costimulatory_domain.value,
                e.prior_hct,
                e.hct_eligible,
                [f.value for f in e.risk_factors],
            ]
        ),
        "s": sources,
        "r": results,
        "v": [_trim([ev.kind.value, timestamp(ev.at), ev.detail]) for ev in state.events],
        "a": [
            [
                a.rule.value,
                a.episode_key,
                timestamp(a.episode_start),
                a.severity.value,
                a.status.value,
                a.signature,
                a.seq,
                a.alert_id,
            ]
            for a in state.alerts.values()
        ],
        "c": None if state.clock is None else timestamp(state.clock),
        "k": None if state.cut is None else timestamp(state.cut),
        "y": {rule.value: carry for rule, carry in state.carries.items()},
        "g": [
            _trim(
                [
                    g.kind,
                    timestamp(g.anchor),
                    timestamp(g.overdue_at),
                    None if g.last_analyte is None else g.last_analyte.value,
                    None if g.last is None else result_row(g.last),
                ]
            )
            for g in state.gaps
        ],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def decode_state(data: bytes) -> PatientState:
    try:
        document = json.loads(data)
        if document.get("f") != FORMAT:
            raise StateFormatError(f"unknown patient-state format {document.get('f')!r}")
        return _decode(document)
    except StateFormatError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise StateFormatError(f"corrupt patient state: {exc}") from exc


def _decode(document: dict[str, Any]) -> PatientState:
    sources: list[str | None] = document["s"]
    state = PatientState(patient_id=document["p"])
    if document["e"] is not None:
        infused, product, costim, prior, eligible, factors = _pad(document["e"], 6)
        state.enrollment = Enrollment(
            infused_at=instant(infused),
            product=product,
            costimulatory_domain=None if costim is None else CostimulatoryDomain(costim),
            prior_hct=bool(prior),
            hct_eligible=eligible,
            risk_factors=tuple(RiskFactor(f) for f in factors or ()),
        )
    for analyte, rows in document["r"].items():
        state.results[Analyte(analyte)] = [result_from_row(row, sources) for row in rows]
    state.events = [
        ClinicalEventRecord(ClinicalEventKind(kind), instant(at), detail)
        for kind, at, detail in (_pad(row, 3) for row in document["v"])
    ]
    for rule, key, start, severity, status, signature, seq, identity in document["a"]:
        state.alerts[f"{rule}|{key}"] = AnnouncedAlert(
            rule=RuleName(rule),
            episode_key=key,
            episode_start=instant(start),
            severity=Severity(severity),
            status=AlertStatus(status),
            signature=signature,
            seq=seq,
            alert_id=identity,
        )
    state.clock = None if document["c"] is None else instant(document["c"])
    state.cut = None if document["k"] is None else instant(document["k"])
    state.carries = {RuleName(rule): carry for rule, carry in document["y"].items()}
    for row in document["g"]:
        kind, anchor, overdue, analyte, last = _pad(row, 5)
        state.gaps.append(
            GapRecord(
                kind=kind,
                anchor=instant(anchor),
                overdue_at=instant(overdue),
                last=None if last is None else result_from_row(last),
                last_analyte=None if analyte is None else Analyte(analyte),
            )
        )
    return state
