"""Fixtures for tests/ops: the ops binaries (see prombin.py) and the repository path.

The tests here call ``prombin.require()`` in their body, so that a binary missing under ``CI``
shows as a FAILED test; these fixtures do the same for other suites (integration tests), where
the failure is reported as a setup error instead.
"""

from __future__ import annotations

from pathlib import Path

import prombin
import pytest

REPO = prombin.REPO


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def promtool() -> str:
    return prombin.require("promtool")


@pytest.fixture
def amtool() -> str:
    return prombin.require("amtool")


@pytest.fixture
def prometheus_bin() -> str:
    return prombin.require("prometheus")


@pytest.fixture
def alertmanager_bin() -> str:
    return prombin.require("alertmanager")
