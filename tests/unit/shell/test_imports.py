"""Only ``streams/shell/`` knows Faust, and importing any module builds no app
(docs/architecture.md "Layout")."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("schemas", "streams")
SHELL = REPO / "streams" / "shell"
#: alembic's scripts, run by alembic with its context set up (streams/web/db.py), not imported
MIGRATIONS = REPO / "streams" / "web" / "migrations"


def modules(include_shell: bool) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "__main__.py" or MIGRATIONS in path.parents:
                continue
            if not include_shell and SHELL in path.parents:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_no_module_outside_the_shell_imports_faust() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if SHELL not in path.parents and "faust" in imported_names(path)
    ]
    assert offenders == []
    assert "faust" in imported_names(SHELL / "app.py")  # the scan does see imports


def test_importing_every_module_outside_the_shell_loads_no_faust() -> None:
    names = modules(include_shell=False)
    assert "streams.cli.worker" in names and "streams.pipeline.monitor" in names
    loaded = run(
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print('faust' in sys.modules)"
    )
    assert loaded == "False"


def test_importing_every_module_builds_no_app() -> None:
    names = modules(include_shell=True)
    assert "streams.shell.app" in names
    built = run(
        "import gc, importlib\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "import faust\n"
        "print(sum(isinstance(o, faust.App) for o in gc.get_objects()))"
    )
    assert built == "0"


def test_faust_finds_the_app_through_the_module() -> None:
    """``faust -A streams.shell.app`` reads ``app``: built from ``CARWATCH_*`` on first access."""
    built = run(
        "import faust, streams.shell.app as m\n"
        "a = m.app\n"
        "assert a is m.app and isinstance(a, faust.App)\n"
        "print(a.conf.id, a.pipeline.agent.name.rsplit('.', 1)[-1])"
    )
    assert built == "carwatch monitor"
