"""Where patient states live, behind one small interface, and the decoded states kept over it.

``StateStore`` holds encoded states: the Faust table in the worker
(``streams.shell.agents.TableStore``), ``DictStore`` in tests and the benchmarks' plain loop.

``PatientStates`` sits in front of a store and keeps each patient's *decoded* state while this
process owns the patient's partition (up to ``capacity`` states, least recently used dropped
first). Decoding a year of history for every batch that touched the patient made a result cost
more the longer the patient's history (issue 12); now a state is decoded once, updated in place by
the engine, and encoded only when it is written back.

A stored value is a one-line summary of the patient's open alerts followed by the
``streams.pipeline.state_codec`` bytes (``pack``). The summary lets a worker that recovers or
scans its table index every patient's open alerts (``open_alerts_of``) without decoding each
history: that decoding made recovering 100,000 year-long histories take minutes. Values written
before the summary existed (codec bytes only) are still read.
"""

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from schemas.vocab import RuleName, Severity
from streams.core.state import AlertStatus, PatientState
from streams.pipeline.state_codec import StateFormatError, decode_state, encode_state

OpenAlerts = tuple[tuple[RuleName, Severity], ...]

#: First byte of a value with an open-alert summary (the codec's JSON never starts with it).
_SUMMARY = b"\x1e"


class StateStore(Protocol):
    """Encoded patient states by key. ``origin`` is the record a read or write belongs to (the
    Faust table takes the partition from it; other stores ignore it)."""

    def get(self, key: bytes, origin: Any) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, origin: Any) -> None: ...


class DictStore:
    """The in-memory store of tests and benchmarks."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes, origin: Any) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, origin: Any) -> None:
        self.data[key] = value


def open_alerts(state: PatientState) -> OpenAlerts:
    return tuple(
        sorted((a.rule, a.severity) for a in state.alerts.values() if a.status is AlertStatus.OPEN)
    )


def pack(state: PatientState) -> bytes:
    """The stored value: open-alert summary line, then the codec bytes."""
    summary = ";".join(f"{rule.value}:{severity.value}" for rule, severity in open_alerts(state))
    return _SUMMARY + summary.encode() + b"\n" + encode_state(state)


def unpack(value: bytes) -> PatientState:
    """Raises ``StateFormatError`` for bytes that are no patient state."""
    if value[:1] == _SUMMARY:
        end = value.find(b"\n")
        if end < 0:
            raise StateFormatError("patient state summary without its end")
        value = value[end + 1 :]
    return decode_state(value)


def open_alerts_of(value: bytes) -> OpenAlerts:
    """The open alerts of a stored value, from its summary (no decoding of the history)."""
    if value[:1] != _SUMMARY:
        return open_alerts(decode_state(value))
    end = value.find(b"\n")
    if end < 0:
        raise StateFormatError("patient state summary without its end")
    try:
        pairs = [item.split(":") for item in value[1:end].decode().split(";") if item]
        return tuple((RuleName(rule), Severity(severity)) for rule, severity in pairs)
    except ValueError as exc:
        raise StateFormatError(f"unreadable open-alert summary: {exc}") from exc


class PatientStates:
    """Decoded states over a ``StateStore``, kept while their partition is owned (see module).

    The store stays the source of truth: ``forget`` drops the states of revoked partitions (they
    may be updated elsewhere meanwhile), ``reload`` re-reads one patient whose cached state an
    engine error left half-updated.

    It also remembers up to ``absent_capacity`` patients the store does not hold (oldest
    forgotten first): a hospital feed's never-infused patients, nine results in ten, whose every
    batch would otherwise ask the store again. While the partition is owned only this process
    writes the patient, through ``put``, which ends the absence; ``forget`` drops absences with
    the states.
    """

    def __init__(
        self, store: StateStore, capacity: int = 10_000, absent_capacity: int = 100_000
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.absent_capacity = absent_capacity
        self._cached: OrderedDict[bytes, tuple[int, PatientState]] = OrderedDict()
        self._absent: dict[bytes, int] = {}

    def get(self, key: bytes, partition: int, origin: Any) -> PatientState | None:
        hit = self._cached.get(key)
        if hit is not None:
            self._cached.move_to_end(key)
            return hit[1]
        if key in self._absent:
            return None
        raw = self.store.get(key, origin)
        if raw is None:
            self._note_absent(key, partition)
            return None
        state = unpack(raw)
        self._keep(key, partition, state)
        return state

    def reload(self, key: bytes, partition: int, origin: Any) -> PatientState | None:
        self._cached.pop(key, None)
        self._absent.pop(key, None)
        return self.get(key, partition, origin)

    def put(self, key: bytes, partition: int, state: PatientState, origin: Any) -> None:
        """Encode ``state`` and write it to the store; it stays cached as the current state."""
        self.store.put(key, pack(state), origin)
        self._absent.pop(key, None)
        self._keep(key, partition, state)

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Drop the cached states and absences of ``partitions`` (all when None)."""
        if partitions is None:
            self._cached.clear()
            self._absent.clear()
            return
        gone = set(partitions)
        for key in [k for k, (p, _) in self._cached.items() if p in gone]:
            del self._cached[key]
        for key in [k for k, p in self._absent.items() if p in gone]:
            del self._absent[key]

    def __len__(self) -> int:
        return len(self._cached)

    def _note_absent(self, key: bytes, partition: int) -> None:
        self._absent[key] = partition
        if len(self._absent) > self.absent_capacity:
            del self._absent[next(iter(self._absent))]

    def _keep(self, key: bytes, partition: int, state: PatientState) -> None:
        self._cached[key] = (partition, state)
        self._cached.move_to_end(key)
        while len(self._cached) > self.capacity:
            self._cached.popitem(last=False)
