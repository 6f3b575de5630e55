"""The access log: who viewed or acted on which patient, when, from where.

Kept apart from the application log on purpose: the application log (stderr, JSON lines,
``streams.logs``) must stay free of PHI and goes wherever logs go; this file names patients --
that is its purpose -- and is created readable by its owner only (0600). One JSON object per
line, appended and flushed per entry, never rewritten.
"""

import json
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.base import utc_isoformat


class AccessLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def record(
        self,
        at: datetime,
        user: str | None,
        action: str,
        *,
        remote: str | None = None,
        **fields: Any,
    ) -> None:
        """One entry: ``action`` such as ``view_patient``, ``view_alert``, ``ack``, ``login``."""
        entry = {"time": utc_isoformat(at), "user": user, "action": action, "remote": remote}
        entry.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(entry, ensure_ascii=False, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
