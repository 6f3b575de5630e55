"""Logging without PHI: JSON lines on stderr, and a filter that redacts patient data.

The code never puts a patient identifier, accession or result value into a log message on
purpose; this filter is the second line of defence for what third-party code (Faust, aiokafka,
aiohttp) might log, e.g. a message key or a raw HL7 segment in an exception:

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
    """Scrubs a record in place; never drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for name in PHI_FIELDS & record.__dict__.keys():
            setattr(record, name, REDACTED)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(
            {
                k: v
                for k, v in record.__dict__.items()
                if k not in _STANDARD and not k.startswith("_")
            }
        )
        if record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Root logging for the worker and the listeners: every handler gets the PHI filter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactPHI())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
