"""JSON-able form of rule accumulators (the ``carries`` of ``PatientState``) and of results.

A rule's accumulator is a dataclass of plain fields: numbers, text, booleans, instants, enums,
``StoredResult``, nested accumulator dataclasses, and lists / tuples / dicts (text keys) of
these. ``encode`` turns one into JSON-able lists, ``decode`` rebuilds it from the field types, so
every evaluation starts from fresh objects (no aliasing between the stored carry and the scan).
Instants are epoch seconds (UTC); a ``StoredResult`` is the compact row of ``result_row``.
A field added to an accumulator goes last and has a default: a carry stored before it existed
decodes with that default (a stored state outlives a release).
"""

import dataclasses
import types
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from schemas.vocab import Comparator, MrdMethod, ResultStatus
from streams.core.state import StoredResult

T = TypeVar("T")


def timestamp(moment: datetime) -> int | float:
    value = moment.timestamp()
    return int(value) if value.is_integer() else value


def instant(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def result_row(result: StoredResult, source_id: Any = None) -> list[Any]:
    """A result as a compact list, trailing empty fields after the source dropped; ``source_id``
    maps the source (a state's table of sources). The row is made once per result and kept on it:
    the caller must not change it."""
    row = result.row
    if row is None:
        row = result.row = _row(result)
    if source_id is None:
        return row
    mapped = row.copy()
    mapped[4] = source_id(mapped[4])
    return mapped


#: the source's place in a row; rows are never shorter, so it can always be mapped
_SOURCE = 4


def _row(result: StoredResult) -> list[Any]:
    collected = timestamp(result.collected_at)
    row = [
        collected,
        result.value,
        result.status.value,
        result.accession,
        result.source,
        None if result.resulted_at is None else timestamp(result.resulted_at) - collected,
        result.detected,
        None if result.method is None else result.method.value,
        result.sensitivity,
        list(result.replaced),
        None if result.comparator is None else result.comparator.value,
    ]
    while len(row) > _SOURCE + 1 and row[-1] in (None, []):
        row.pop()
    return row


def result_from_row(row: list[Any], sources: list[str | None] | None = None) -> StoredResult:
    collected, value, status, accession, source, resulted, detected, method, sens, old, comp = (
        row + [None] * (11 - len(row))
    )
    if sources is not None:
        source = sources[source]
    result = StoredResult(
        collected_at=instant(collected),
        value=value,
        status=ResultStatus(status),
        accession=accession,
        source=source,
        resulted_at=None if resulted is None else instant(collected + resulted),
        detected=detected,
        method=None if method is None else MrdMethod(method),
        sensitivity=sens,
        replaced=tuple(old or ()),
        comparator=None if comp is None else Comparator(comp),
    )
    kept = row + [None] * (_SOURCE + 1 - len(row))
    if sources is not None:
        kept[_SOURCE] = source
    result.row = kept
    return result


def encode(value: Any) -> Any:
    """JSON-able form of an accumulator (or any value of the supported field types)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, StoredResult):
        return result_row(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init]
    if isinstance(value, list | tuple):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode(item) for key, item in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__} in a rule carry")


def decode(kind: type[T], data: Any) -> T:
    """Rebuild a value of type ``kind`` from ``encode``'s output."""
    decoded: T = _decode(kind, data)
    return decoded


def _decode(kind: Any, data: Any) -> Any:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        if data is None:
            return None
        options = [arg for arg in get_args(kind) if arg is not type(None)]
        return _decode(options[0], data)
    if data is None:
        return None
    if kind is datetime:
        return instant(data)
    if kind is StoredResult:
        return result_from_row(data)
    if kind in (float, int, str, bool):
        return kind(data)
    if kind is Any:
        return data
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(data)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = _field_types(kind)
        if len(data) > len(hints):
            raise TypeError(f"{len(data)} values for the {len(hints)} fields of {kind.__name__}")
        # a carry stored before a field was appended has fewer values: the field's default
        return kind(
            **{name: _decode(hint, item) for (name, hint), item in zip(hints, data, strict=False)}
        )
    if origin is list:
        (item_type,) = get_args(kind)
        return [_decode(item_type, item) for item in data]
    if origin is tuple:
        args = get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        return tuple(_decode(arg, item) for arg, item in zip(args, data, strict=True))
    if origin is dict:
        key_type, item_type = get_args(kind)
        return {_decode(key_type, key): _decode(item_type, item) for key, item in data.items()}
    raise TypeError(f"cannot decode {kind!r} in a rule carry")


@cache
def _field_types(kind: type) -> tuple[tuple[str, Any], ...]:
    hints = get_type_hints(kind)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(kind) if f.init)
