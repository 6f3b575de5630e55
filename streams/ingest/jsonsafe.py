"""Untrusted JSON (NDJSON lines, FHIR bodies): every problem is a ``ValueError``, never a crash.

The standard library's ``json`` is linear and written in C, so it stays the parser; what it lets
through, and what made the first release crash or answer 500 forever, is checked here:

- bytes that are not UTF-8 (a BOM is allowed);
- ``NaN``/``Infinity`` (not JSON numbers);
- duplicate names in one object (``{"value": 0.42, "value": 4.2}``): RFC 8259 leaves their
  meaning open — ``json`` keeps the last, other parsers the first — so which value was meant is
  unknown, and a value we cannot read with certainty is never picked;
- nesting deeper than ``MAX_DEPTH`` (``json`` itself raises ``RecursionError`` near 1000, and
  the pydantic models behind it recurse again);
- lone surrogates (``"\\ud800"``): valid JSON escapes, but no character, so the text cannot be
  written back as UTF-8 (to Kafka, to a log, to an answer). Only inputs whose text contains a
  surrogate escape are walked for them, so clean inputs pay nothing.
"""

import json
import re
from collections import Counter
from typing import Any, Final

#: Deepest nesting of objects and arrays accepted (a FHIR Bundle of Observations needs about 10).
MAX_DEPTH: Final = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def load_json(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON; raises ``ValueError`` with a one-line explanation."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    else:
        text = data.lstrip("\ufeff")
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except _DuplicateName as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    _check(value, max_depth, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return value


class _DuplicateName(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        name = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise _DuplicateName(f"the name {name[:40]!r} occurs twice in one object")
    return obj


def _check(value: Any, max_depth: int, *, surrogates: bool) -> None:
    """Depth (iteratively: no recursion on hostile input) and, if asked, lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
            if surrogates:
                for key in node:
                    _encodable(key)
        elif isinstance(node, list):
            children = node
        else:
            if surrogates and isinstance(node, str):
                _encodable(node)
            continue
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a string holds a lone surrogate (\\u{ord(text[exc.start]):04x})"
        ) from None


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced, safe to write as UTF-8 (dead letters, answers)."""
    return text.encode("utf-8", "replace").decode("utf-8")
