"""Where patient states live, behind one small interface: the Faust table in the worker
(``streams.shell.agents.TableStore``), a dict in tests and the benchmark's baseline."""

from typing import Any, Protocol


class StateStore(Protocol):
    """Where patient states live: the Faust table in the worker, a dict in the baseline."""

    def get(self, key: bytes, origin: Any) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, origin: Any) -> None: ...


class DictStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes, origin: Any) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, origin: Any) -> None:
        self.data[key] = value
