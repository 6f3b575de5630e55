"""Locate the Prometheus/Alertmanager binaries that tests/ops runs.

Debian's packages install them as /usr/bin/promtool and /usr/bin/prometheus (package
``prometheus``) and /usr/bin/amtool and /usr/bin/prometheus-alertmanager (package
``prometheus-alertmanager``); upstream tarballs call the server ``alertmanager``.
``scripts/install-ops-tools.sh`` installs the Debian packages.

An environment variable (``PROMTOOL``, ``AMTOOL``, ``PROMETHEUS``, ``ALERTMANAGER``) overrides the
search. When a binary is missing, :func:`require` fails the test if the ``CI`` environment
variable is set (CI installs the tools, so a missing one is a broken CI) and skips it otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = (
    "run scripts/install-ops-tools.sh (Debian packages `prometheus` and `prometheus-alertmanager`)"
)

#: tool -> (environment override, candidate executable names, Debian package)
TOOLS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "promtool": ("PROMTOOL", ("promtool",), "prometheus"),
    "prometheus": ("PROMETHEUS", ("prometheus",), "prometheus"),
    "amtool": ("AMTOOL", ("amtool",), "prometheus-alertmanager"),
    "alertmanager": (
        "ALERTMANAGER",
        ("prometheus-alertmanager", "alertmanager"),
        "prometheus-alertmanager",
    ),
}
#: Searched after PATH (CI may run with a trimmed PATH).
EXTRA_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/prometheus", "/opt/alertmanager")


def find(tool: str) -> str | None:
    """Absolute path of ``tool`` (a key of :data:`TOOLS`), or None when it is not installed."""
    env_name, names, _ = TOOLS[tool]
    override = os.environ.get(env_name)
    if override:
        path = shutil.which(override)
        return str(Path(path).resolve()) if path else None
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for directory in EXTRA_DIRS:
        for name in names:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set (to anything but an explicit no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(tool: str) -> str:
    """Path of ``tool``; fail (under CI) or skip (elsewhere) the calling test when it is missing."""
    path = find(tool)
    if path is not None:
        return path
    env_name, names, package = TOOLS[tool]
    message = (
        f"{tool} not found (looked for {', '.join(names)} on PATH and in "
        f"{', '.join(EXTRA_DIRS)}; override with ${env_name}): it comes with the Debian package "
        f"`{package}`; {INSTALL_HINT}"
    )
    if in_ci():
        pytest.fail(f"CI is set but {message}", pytrace=False)
    pytest.skip(message)
