"""``make demo`` as a newcomer runs it: the printed URL and login show an inbox with alerts
within a minute. Its own broker, ports and folders (free ports, the test's tmp folder)."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.integration.conftest import REPO, free_port, wait_for

pytestmark = pytest.mark.integration
PRINTED = re.compile(r"clinician pages: (http://\S+)\s+login: (\S+) / (\S+)")


def _collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def test_make_demo_shows_alerts_in_the_inbox_within_a_minute(chromium: Any, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CARWATCH_KAFKA_PORT": str(free_port()),
        "CARWATCH_KAFKA_CONTROLLER_PORT": str(free_port()),
        "CARWATCH_STATE_DIR": str(tmp_path / "kafka"),
        "CARWATCH_METRICS_PORT": str(free_port()),
        "CARWATCH_WEB_PORT": str(free_port()),
        "CARWATCH_UI_PORT": str(free_port()),
        "CARWATCH_UI_METRICS_PORT": str(free_port()),
        "DEMO_LOG_DIR": str(tmp_path / "demo"),
        "CARWATCH_PARTITIONS": "4",
    }
    for name in ("CARWATCH_BROKER_URL", "CARWATCH_UI_USERS_FILE", "CARWATCH_UI_DATA_DIR"):
        env.pop(name, None)
    demo = subprocess.Popen(
        ["make", "-s", "demo", "DURATION=45"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert demo.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=_collect, args=(demo.stderr, lines), daemon=True)
    reader.start()
    context = chromium.new_context()
    try:
        printed = wait_for(
            lambda: (
                next((m for line in lines if (m := PRINTED.search(line))), None)
                or (demo.poll() is not None and pytest.fail("".join(lines[-30:])))
            ),
            240,
            "the demo to print the URL and login",
        )
        started = time.monotonic()
        url, user, password = printed.groups()
        page = context.new_page()
        page.goto(url)
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        page.click("form[action='/login'] button[type=submit]")
        page.wait_for_selector("#unacknowledged")
        wait_for(lambda: _alert_rows(page) > 0, 60, "alerts in the demo's inbox", interval=2)
        assert time.monotonic() - started < 60
    finally:
        context.close()
        try:
            demo.wait(180)  # the demo stops by itself after DURATION
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGINT)  # its own clean-up stops what it started
            demo.wait(120)
        reader.join(10)
        demo.stderr.close()
    assert demo.returncode == 0, "".join(lines[-30:])
    assert "done; logs in" in lines[-1]


def _alert_rows(page: Any) -> int:
    page.reload()
    rows: int = page.locator("tr.alert").count()
    return rows
