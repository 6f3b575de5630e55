"""Logging without PHI: JSON lines on stderr, and a filter that redacts patient data.

The code never puts a patient identifier, accession or result value into a log message on
purpose; this filter is the second line of defence for what third-party code (Faust, aiokafka,
aiohttp) might log, e.g. a message key or a raw HL7 segment in an exception:

Records are never mutated beyond blanking PHI-named ``extra`` fields: the formatted text is what
gets redacted (``RedactingFormatter``), so every handler can keep its own formatting.

- values of PHI-bearing ``extra`` fields (``patient_id``, ``accession``, ``key``, ``raw``, ...)
  are replaced by ``[redacted]``;
- HL7 v2 segments that carry identity or results (PID, NK1, OBX, OBR, ...) are cut after the
  segment name; ``"patient_id": "..."`` in JSON text is blanked.
"""

import json
import logging
import re
import sys
from typing import Any

REDACTED = "[redacted]"
PHI_FIELDS = frozenset({"patient_id", "patient", "accession", "key", "raw", "value", "mrn"})
_HL7_SEGMENT = re.compile(r"\b(PID|PD1|NK1|PV1|OBR|OBX|NTE|SPM|ORC)\|[^\r\n]*")
_JSON_ID = re.compile(r'("(?:patient_id|accession|reference)"\s*:\s*)"[^"]*"')
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    text = _HL7_SEGMENT.sub(lambda m: f"{m.group(1)}|{REDACTED}", text)
    return _JSON_ID.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)


class RedactPHI(logging.Filter):
    """Blanks PHI-named ``extra`` fields of a record; never drops it.

    Message and arguments are left alone (other handlers and formatters format them their own
    way); what a handler finally writes is redacted by ``RedactingFormatter``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name in PHI_FIELDS & record.__dict__.keys():
            setattr(record, name, REDACTED)
        return True


class RedactingFormatter(logging.Formatter):
    """Wraps any formatter: the text it produces -- message, traceback -- is redacted."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def protect(handler: logging.Handler) -> None:
    """Make a handler PHI-safe (idempotent): filter extra fields, redact what it writes."""
    if not any(isinstance(f, RedactPHI) for f in handler.filters):
        handler.addFilter(RedactPHI())
    if not isinstance(handler.formatter, RedactingFormatter | JsonFormatter):
        handler.setFormatter(RedactingFormatter(handler.formatter))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; message and traceback are redacted before encoding."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        document.update(
            {
                k: v
                for k, v in record.__dict__.items()
                if k not in _STANDARD and not k.startswith("_")
            }
        )
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(document, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Root logging for the worker and the listeners: every handler gets the PHI filter."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    protect(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
