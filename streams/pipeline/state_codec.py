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
from operator import is_
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
    StoredResult,
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


class _Fragment:
    """One analyte's history as JSON text, with the results it was made from."""

    __slots__ = ("results", "sources", "text", "texts")

    def __init__(self, history: list[StoredResult], memo: "_Memo", before: "_Fragment | None"):
        known = before.texts if before is not None else {}
        self.results = list(history)
        #: id of a result → (the result, so the id is not another's; its row's text)
        self.texts: dict[int, tuple[StoredResult, str]] = {}
        for result in history:
            hit = known.get(id(result))
            if hit is None or hit[0] is not result:
                row = result_row(result, memo.source_id)
                hit = (result, json.dumps(row, separators=(",", ":"), ensure_ascii=False))
            self.texts[id(result)] = hit
        self.sources = {result.source for result in history}
        self.text = ",".join(self.texts[id(result)][1] for result in history)

    def holds(self, history: list[StoredResult]) -> bool:
        return len(history) == len(self.results) and all(map(is_, history, self.results))


class _Memo:
    """A state's table of sources and its histories as JSON text, kept between writes: a stored
    result never changes, so a write encodes only the histories that changed, and in them only
    the new results. The table only grows while the state lives (indices stay valid); it is made
    anew, with every text, when it holds a source no result uses any more."""

    __slots__ = ("fragments", "index", "sources")

    def __init__(self, sources: list[str | None]) -> None:
        self.sources = sources
        self.index = {source: n for n, source in enumerate(sources)}
        self.fragments: dict[Analyte, _Fragment] = {}

    def source_id(self, source: str | None) -> int:
        n = self.index.get(source)
        if n is None:  # appended: the texts made so far stay valid
            n = self.index[source] = len(self.sources)
            self.sources.append(source)
        return n

    def encode(self, results: dict[Analyte, list[StoredResult]]) -> str | None:
        """The ``r`` member's text, or None when the table holds a source no longer used."""
        fragments: dict[Analyte, _Fragment] = {}
        for analyte, history in results.items():
            if history:
                before = self.fragments.get(analyte)
                if before is None or not before.holds(history):
                    before = _Fragment(history, self, before)
                fragments[analyte] = before
        self.fragments = fragments
        if len(self.sources) > len(set().union(*(f.sources for f in fragments.values()))):
            return None
        return ",".join(f'"{a.value}":[{f.text}]' for a, f in fragments.items())


def encode_state(state: PatientState) -> bytes:
    memo: _Memo | None = state.codec_memo
    results = None if memo is None else memo.encode(state.results)
    if memo is None or results is None:
        memo = state.codec_memo = _Memo([])
        results = memo.encode(state.results)
        assert results is not None  # a table made by this very encoding holds only used sources
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
        "s": memo.sources,
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
                    g.limit_days,
                    None if g.last_analyte is None else g.last_analyte.value,
                    None if g.last is None else result_row(g.last),
                ]
            )
            for g in state.gaps
        ],
    }
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return f'{text[:-1]},"r":{{{results}}}}}'.encode()


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
    state.codec_memo = _Memo(sources)
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
        kind, anchor, overdue, limit, analyte, last = _pad(row, 6)
        state.gaps.append(
            GapRecord(
                kind=kind,
                anchor=instant(anchor),
                overdue_at=instant(overdue),
                limit_days=limit,
                last=None if last is None else result_from_row(last),
                last_analyte=None if analyte is None else Analyte(analyte),
            )
        )
    return state
