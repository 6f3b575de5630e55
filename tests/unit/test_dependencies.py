"""Dependencies: every imported package is declared, and requirements.lock pins what
pyproject.toml asks for (``make lock`` regenerates it)."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCK = REPO / "requirements.lock"
#: Our own top-level packages and the test helpers imported by name.
OWN = {"streams", "schemas", "tests", "bench", "promql", "prombin", "conftest", "strategies"}
#: Packages a benchmark installs in a virtualenv of its own (never in the project's): the extra
#: that declares each. Quix Streams pins confluent-kafka < 2.13 (bench/pipeline/quix_app.py).
OWN_VENV = {"quixstreams": "quix"}


def requirements(*extras: str) -> list[Requirement]:
    found = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return found


def pins() -> dict[str, str]:
    pinned = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not name==version"
            pinned[canonicalize_name(name)] = version.strip()
    return pinned


def test_the_lock_pins_every_requirement_within_its_bounds() -> None:
    locked = pins()
    for requirement in requirements("test", "rocksdict"):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock has {name}=={locked[name]}, pyproject.toml wants "
            f"{requirement.specifier}: run make lock"
        )


def test_every_runtime_requirement_has_an_upper_bound() -> None:
    for requirement in requirements("rocksdict"):
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), (
            f"{requirement} has no upper bound"
        )


def imported(folder: str) -> set[str]:
    names = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN


def declared(*extras: str) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements(*extras)}


def test_every_imported_package_is_declared_directly() -> None:
    """Code that imports a package only a dependency brings along breaks when that dependency
    drops it (aiohttp and aiokafka came in through faust-streaming before)."""
    distributions = packages_distributions()
    for folders, extras in (
        (("streams", "schemas"), ()),
        (("tests", "bench", "scripts"), ("test",)),
    ):
        for folder in folders:
            for module in imported(folder):
                if module in OWN_VENV:
                    assert module in declared(OWN_VENV[module]), f"declare {module}"
                    continue
                names = {canonicalize_name(d) for d in distributions.get(module, [])}
                assert names & declared(*extras), f"{folder} imports {module}: declare {names}"
