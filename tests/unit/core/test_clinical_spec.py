"""docs/clinical-spec.md stays the rule book of the code: every rule module, every policy setting
and every rule's test file is in it, and the tests its traceability table names exist."""

import ast
import re
from pathlib import Path

import pytest

from streams.core.engine import RULES
from streams.core.policy import Policy

REPO = Path(__file__).parents[3]
SPEC = (REPO / "docs" / "clinical-spec.md").read_text(encoding="utf-8")
TABLE = SPEC.split("## Traceability")[1]


def _row(rule: str) -> list[str]:
    for line in TABLE.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == f"`{rule}`":
            return cells
    raise AssertionError(f"docs/clinical-spec.md has no traceability row for {rule}")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name.value)
def test_every_rule_has_a_row_naming_its_module_and_tests(rule):
    cells = _row(rule.name.value)
    module = type(rule).__module__.replace(".", "/") + ".py"
    assert f"`{module}`" == cells[1]
    assert (REPO / module).exists()
    tests_cell = cells[4]
    test_file = re.match(r"`([^`]+)`", tests_cell)
    assert test_file is not None, tests_cell
    path = REPO / test_file.group(1)
    assert path.exists(), path
    assert path.name == f"test_{rule.name.value}.py"
    defined = {
        node.name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
    }
    named = re.findall(r"`(test_[a-z0-9_]+)`", tests_cell)
    assert named, tests_cell
    assert set(named) <= defined, set(named) - defined


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name.value)
def test_every_setting_a_rule_reads_is_a_policy_setting_in_the_spec(rule):
    for setting in rule.reads.settings:
        assert setting in Policy.model_fields, setting
        assert f"`{setting}`" in SPEC, f"{setting} is not in docs/clinical-spec.md"


def test_every_policy_setting_is_in_the_spec_and_read_by_something():
    read = {s for rule in RULES for s in rule.reads.settings}
    engine = {
        "version",
        "timezone",
        "alert_on_preliminary",
        "history_window_days",
        "max_results_per_analyte",
        "plausibility",
    }
    for name in Policy.model_fields:
        assert f"`{name}`" in SPEC, f"policy setting {name} is not in docs/clinical-spec.md"
        assert name in read | engine, f"policy setting {name} is read by no rule"


def test_every_rule_module_is_registered():
    modules = {
        p.stem
        for p in (REPO / "streams" / "core" / "rules").glob("*.py")
        if p.stem not in ("__init__", "base", "bcell")
    }
    assert modules == {rule.name.value for rule in RULES}
