"""One ordered stream from many topic partitions: the read model's input order. Pure code.

Kafka orders records within a partition only. The read model needs more: a lab result may only
be stored once its patient's ``infusion`` (another topic) was applied, and an acknowledgement
refers to an alert event. Sources send in that order and Kafka timestamps record it, so records
are released in ``Incoming.order`` -- (timestamp, topic rank, partition, offset) -- and a
record is released only when no partition could still deliver an earlier one: every partition
either has a buffered record or has been read to its end offset.

That makes the database a function of the topics' contents: a catch-up after a stop and a
rebuild from scratch apply the same records in the same order, whatever the fetch sizes were.
A partition that claims unread records but delivers none for ``stall_s`` (a gap of compacted or
control records, a broker hiccup) stops blocking the others: liveness over perfect order.
"""

import heapq
from collections import deque
from collections.abc import Iterable, Mapping

from streams.web.readmodel import Incoming, Source

Partition = tuple[Source, int]


class Merger:
    """Buffers fetched records per partition and releases them in merged order."""

    def __init__(self, stall_s: float = 5.0) -> None:
        self.stall_s = stall_s
        self._buffers: dict[Partition, deque[Incoming]] = {}
        self._blocked_since: dict[Partition, float] = {}

    def add(self, records: Iterable[Incoming]) -> None:
        for record in records:
            self._buffers.setdefault((record.source, record.partition), deque()).append(record)

    def buffered(self, partition: Partition) -> int:
        return len(self._buffers.get(partition, ()))

    def clear(self) -> None:
        self._buffers.clear()
        self._blocked_since.clear()

    def release(self, unread: Mapping[Partition, bool], now: float, limit: int) -> list[Incoming]:
        """Up to ``limit`` records in merged order.

        ``unread`` says, per assigned partition, whether the broker holds records beyond what
        was fetched (position < end offset). Such a partition with an empty buffer blocks the
        release until it delivers, or until it has blocked for ``stall_s``.
        """
        out: list[Incoming] = []
        heads = [(q[0].order, key) for key, q in self._buffers.items() if q]
        heapq.heapify(heads)
        while heads and len(out) < limit:
            if self._blocked(unread, now):
                break
            _, key = heapq.heappop(heads)
            queue = self._buffers[key]
            out.append(queue.popleft())
            if queue:
                heapq.heappush(heads, (queue[0].order, key))
        return out

    def _blocked(self, unread: Mapping[Partition, bool], now: float) -> bool:
        blocking = {key for key, more in unread.items() if more and not self._buffers.get(key)}
        for key in list(self._blocked_since):
            if key not in blocking:
                del self._blocked_since[key]
        for key in blocking:
            self._blocked_since.setdefault(key, now)
        return any(now - self._blocked_since[key] < self.stall_s for key in blocking)
