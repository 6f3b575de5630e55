"""docs/settings.md is generated from the settings models and kept in sync."""

import ast
from pathlib import Path

from streams.settings import SETTINGS_MODELS
from streams.settings_reference import render, undocumented

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "settings.md"


def test_the_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/settings.md is out of date: run `make docs`"
    )


def test_every_setting_has_a_comment_to_document_it() -> None:
    assert undocumented() == [], "add a `#:` comment above these fields"


def settings_classes() -> set[str]:
    """``module:Class`` of every class in streams/ that derives from ``BaseSettings``."""
    found = set()
    for path in (REPO / "streams").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", getattr(base, "attr", None)) == "BaseSettings"
                for base in node.bases
            ):
                found.add(f"{module}:{node.name}")
    return found


def test_every_settings_model_is_registered() -> None:
    """A model missing from SETTINGS_MODELS would have its variables rejected at start and
    left out of the reference."""
    assert settings_classes() == set(SETTINGS_MODELS)


def test_the_reference_lists_every_variable_once() -> None:
    text = render()
    for line in ("| `CARWATCH_METRICS_HOST` |", "| `CARWATCH_WEBHOOK_SECRET` |"):
        assert text.count(line) == 1
