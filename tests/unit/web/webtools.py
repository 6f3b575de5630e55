"""Helpers of the web unit tests: Kafka-like records for the read model, and a story to feed."""

import json
from typing import Any

from schemas.alert import AlertEvent
from streams.core.policy import DEFAULT_POLICY
from streams.testing import Timeline, run
from streams.web.db import Database
from streams.web.readmodel import Incoming, Source, apply_record


class Feed:
    """Numbers records like a topic partition would (offsets per source, rising timestamps)."""

    def __init__(self) -> None:
        self.offsets: dict[Source, int] = {}
        self.clock_ms = 1_700_000_000_000

    def record(self, source: Source, value: bytes | dict[str, Any] | None) -> Incoming:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        offset = self.offsets.get(source, 0)
        self.offsets[source] = offset + 1
        self.clock_ms += 1
        return Incoming(source, 0, offset, self.clock_ms, raw)

    def wire(self, events: list[Any]) -> list[Incoming]:
        """Timeline records (and the alerts they raise) as topic records, in order."""
        out = []
        for event in events:
            source = Source.LABS if event.type == "lab_result" else Source.CLINICAL
            out.append(self.record(source, event.model_dump_json().encode()))
        return out

    def alerts(self, alerts: list[AlertEvent]) -> list[Incoming]:
        return [self.record(Source.ALERTS, a.model_dump_json().encode()) for a in alerts]


def apply_all(db: Database, records: list[Incoming]) -> list[str]:
    with db.write() as session:
        return [apply_record(session, r, DEFAULT_POLICY).outcome.value for r in records]


def story() -> tuple[list[Any], list[AlertEvent]]:
    """An IgG decline with a correction: inputs and the alerts the engine raises on them."""
    t = Timeline("P-story").infusion()
    t.igg(-3, 700).igg(30, 350).igg(45, 300).ferritin(-1, 400).anc(2, 300).anc(3, 0)
    events = t.events
    return events, run(events)
