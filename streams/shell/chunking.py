"""Chunked delivery: input-topic records handed to the agent one fetched run at a time."""

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message


class ChunkedApp(Protocol):
    """What the consumer reads from its app (``streams.shell.app.CarwatchApp``)."""

    chunked_topics: frozenset[str]
    chunk_size: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records of one input partition, as fetched (aiokafka ``ConsumerRecord``)."""

    records: Sequence[Any]


class ChunkingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering input-topic records in chunks (module docstring)."""

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        chunked = cast(ChunkedApp, self.app).chunked_topics
        chunk_size = cast(ChunkedApp, self.app).chunk_size
        records, active = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:  # as upstream: log and let the fetcher retry
                self.log.warning(f"exception performing seek when flow not active {exc!r}")
            return
        for tp, fetched in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic not in chunked:
                for record in fetched:
                    yield tp, self._to_message(tp, record)
                continue
            for start in range(0, len(fetched), chunk_size):
                part = fetched[start : start + chunk_size]
                yield tp, self._chunk_message(tp, part, generation_id)

    def _chunk_message(self, tp: TP, part: Sequence[Any], generation_id: int) -> Message:
        last = part[-1]
        message = faust_aiokafka.ConsumerMessage(
            last.topic,
            last.partition,
            last.offset,
            cast(float, last.timestamp / 1000.0 if last.timestamp is not None else None),
            last.timestamp_type,
            None,
            None,
            cast(bytes, Chunk(part)),  # the agent unpacks it; no serializer touches it
            None,
            0,
            0,
            tp,
            generation_id=generation_id,
        )
        message.first_offset = part[0].offset  # type: ignore[attr-defined]
        # The fetcher adds offsets it jumps over as "done" at once (a gap); a chunk's earlier
        # offsets are not done until the chunk is acknowledged, see ``ack``.
        self._read_offset[tp] = last.offset - 1
        return message

    def ack(self, message: Message) -> bool:
        first = getattr(message, "first_offset", None)
        if first is not None and first < message.offset and not message.acked:
            committed = self._committed_offset[message.tp]
            begin = first if committed is None else max(first, committed)
            if begin < message.offset:
                gap = self._gap[message.tp]
                gap.addi(begin, message.offset)
                gap.merge_overlaps()
        return bool(super().ack(message))


class ChunkingTransport(faust_aiokafka.Transport):
    Consumer = ChunkingConsumer
