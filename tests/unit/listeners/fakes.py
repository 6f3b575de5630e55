"""A publisher without a broker for the listener tests: records what would be written."""

import asyncio
from datetime import datetime

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from streams.listeners.plans import Plan
from streams.listeners.pool import ParsePool
from streams.listeners.publisher import BrokerUnavailable


class FakePublisher:
    """``fail`` behaves like an unreachable broker; ``gate`` holds every publish until set."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.results: list[LabResult] = []
        self.dead_letters: list[tuple[DeadLetter, str | None]] = []
        self.inbound: list[tuple[bytes, str, str, str]] = []
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def store_inbound(
        self, raw: bytes, feed: str, content_type: str, received_at: datetime, message_id: str
    ) -> str:
        if self.fail:
            raise BrokerUnavailable("Kafka at 127.0.0.1:1 is unavailable")
        self.inbound.append((raw, feed, content_type, message_id))
        return f"carwatch.inbound:0:{len(self.inbound) - 1}"

    async def publish(self, plan: Plan) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BrokerUnavailable("Kafka at 127.0.0.1:1 is unavailable")
        self.results += [LabResult.model_validate_json(value) for _, value in plan.results]
        self.dead_letters += [
            (DeadLetter.model_validate_json(value), key.decode() if key else None)
            for key, value in plan.dead_letters
        ]


def thread_pool() -> ParsePool:
    """The parse pool of unit tests: threads start at once (the listeners use processes)."""
    return ParsePool(2, mode="thread", timeout_s=10)
