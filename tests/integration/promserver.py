"""A real Prometheus for integration tests: the shipped config pointed at the test's processes.

Prometheus comes from Debian's ``prometheus`` package (tests/ops/prombin.py locates it); it runs on
127.0.0.1 and is stopped by the test that started it. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import REPO

PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "carwatch.rules.yml"
TIMEOUT = 60.0  # seconds any Prometheus check may wait


def prometheus_config(tmp: Path, targets: dict[str, list[str]], port: int) -> Path:
    """The shipped prometheus.yml for a test: 1 s intervals, each job of ``targets`` scraping
    its addresses, the project's rules file, the ``prometheus`` job on ``port``, no
    Alertmanager. Every job must be one the shipped file defines."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    rule_files = [(PROM_DIR / f).resolve() for f in config["rule_files"]]
    assert rule_files == [RULES.resolve()], rule_files
    config["rule_files"] = [str(RULES.resolve())]
    config.pop("alerting", None)  # no Alertmanager here (and for: >= 1m, nothing would fire)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    missing = set(targets) - set(jobs)
    assert not missing, f"deploy/prometheus/prometheus.yml has no job {sorted(missing)}"
    # the test's jobs and Prometheus' own; each keeps its settings (metrics_path, scheme, ...)
    # with its service discovery replaced by this test's addresses
    addresses = {**targets, "prometheus": [f"127.0.0.1:{port}"]}
    config["scrape_configs"] = [jobs[name] for name in addresses]
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": addresses[job["job_name"]]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def prometheus(binary: str, config: Path, port: int, tmp: Path) -> Iterator[tuple[str, Path]]:
    """Run Prometheus on 127.0.0.1:``port`` until the block ends; yield (base URL, its log).

    Stops it (and only it) afterwards: SIGTERM, a bounded wait, then SIGKILL.
    """
    log = tmp / "prometheus.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            eventually(
                "Prometheus to be ready",
                lambda: process.poll() is not None or _ready(base),
                log,
                timeout=30,
            )
            if process.poll() is not None:
                pytest.fail(f"prometheus exited {process.returncode}:\n{log.read_text()[-3000:]}")
            yield base, log
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _ready(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
        return response.status == 200


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def eventually(what: str, check: Callable[[], Any], log: Path, timeout: float = TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}\n{tail}",
                pytrace=False,
            )
        time.sleep(0.5)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """Instant query: the result vector (each item has ``metric`` and ``value``)."""
    answer = http_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])
