"""Fixtures of the clinician-web tests: ``carwatch web`` processes and a real headless Chromium.

The browser is Debian's ``/usr/bin/chromium`` (scripts/install-web-tools.sh), driven by
Playwright for Python with ``executable_path`` set: no test tool downloads a browser. It runs
with the flags this machine needs (no sandbox as root, no background networking: the network is
closed and Chromium would otherwise keep trying Google's hosts).
"""

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from streams.core.policy import DEFAULT_POLICY
from streams.web.auth import hash_password
from streams.web.db import DERIVED_TABLES, IngestStatus, connect
from streams.web.queries import PatientKeys, inbox
from tests.integration.conftest import REPO, Pipeline, free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER, PASSWORD = "demo", "correct horse battery staple"


def users_file(folder: Path) -> Path:
    path = folder / "users.toml"
    path.write_text(
        f'[users.{USER}]\nname = "Dr Demo"\npassword_hash = "{hash_password(PASSWORD)}"\n',
        encoding="utf-8",
    )
    return path


@dataclass
class WebServer:
    """One ``carwatch web`` subprocess on free ports, its database and logs under ``folder``."""

    env: dict[str, str]
    folder: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: IO[bytes] | None = None

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline, folder: Path, **extra: str) -> "WebServer":
        folder.mkdir(parents=True, exist_ok=True)
        env = pipeline.env(CARWATCH_ACKS_TOPIC=acks_topic(pipeline), **extra)
        return cls(web_env(env, folder), folder)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / f"web-{self.starts}.log"

    def start(self, *args: str) -> None:
        self.starts += 1
        self._log = self.log.open("wb")
        env = {
            **self.env,
            "CARWATCH_UI_PORT": str(self.port),
            "CARWATCH_UI_METRICS_PORT": str(self.metrics_port),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "web", *args],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: not self.alive() or self.healthy(), 60, "carwatch web /healthz")
        assert self.alive(), self.log.read_text()[-3000:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        return request(self, "GET", "/healthz")[0] == 200

    def stop(self) -> None:
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = http_call("127.0.0.1", self.metrics_port, "GET", "/metrics", {})
        if status != 200:
            return {}
        found = {}
        text = body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def caught_up_since(self, moment: float) -> bool:
        """Every partition read to its end at a time after ``moment`` (Unix seconds)."""
        samples = self.samples()
        caught = samples.get(("carwatch_readmodel_caught_up_timestamp_seconds", ()), 0.0)
        lag = [v for (name, _), v in samples.items() if name == "carwatch_readmodel_lag_messages"]
        return caught > moment and bool(lag) and sum(lag) == 0

    def wait_caught_up(self, timeout: float = 60) -> None:
        moment = time.time()
        wait_for(lambda: self.caught_up_since(moment), timeout, "the read model to catch up")


def acks_topic(pipeline: Pipeline) -> str:
    return f"{pipeline.name}.acks"


def web_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    return {
        **env,
        "CARWATCH_UI_DATA_DIR": str(folder),
        "CARWATCH_UI_USERS_FILE": str(users_file(folder)),
        "CARWATCH_UI_STALE_AFTER_SECONDS": "5",
    }


def request(
    server: WebServer, method: str, path: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP request (no redirects followed, no cookies): what an outsider gets."""
    return http_call("127.0.0.1", server.port, method, path, headers)


def http_call(
    host: str, port: int, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except OSError:
        return 0, {}, b""
    finally:
        connection.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Per module, not per session: Playwright's sync API keeps an event loop running in this
    thread while it is open, and later asyncio tests could not start theirs."""
    if not CHROMIUM.exists():
        message = "Debian's chromium is missing: run scripts/install-web-tools.sh (make setup)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def login(page: Any, server: WebServer) -> None:
    page.goto(server.base + "/")
    assert "/login" in page.url
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_selector("#unacknowledged")


def snapshot(url: str) -> dict[str, Any]:
    """Every derived row (surrogate ids aside) and the inbox with its acknowledgements."""
    db = connect(url)
    try:
        out: dict[str, Any] = {}
        with db.read() as session:
            for table in DERIVED_TABLES:
                if table is IngestStatus:  # when it was caught up differs, of course
                    continue
                columns = [c for c in table.__table__.columns if c.name != "id"]
                rows = session.execute(select(*columns)).all()
                out[table.__tablename__] = sorted(repr(tuple(row)) for row in rows)
            keys = PatientKeys(b"same key for both")
            now = datetime.now(UTC)
            out["inbox"] = [
                (i.alert.alert_id, i.alert.severity, i.ack.event_id if i.ack else None)
                for i in inbox(session, keys, now, DEFAULT_POLICY.tz)
            ]
        return out
    finally:
        db.dispose()
