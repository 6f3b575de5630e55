"""The generated JSON Schemas in schemas/json/ match the pydantic models."""

import json

import pytest

from schemas.generate import JSON_DIR, MODELS, render


@pytest.mark.parametrize("name", sorted(MODELS))
def test_generated_schema_is_in_sync(name: str) -> None:
    path = JSON_DIR / f"{name}.schema.json"
    assert path.exists(), f"missing {path}: run python -m schemas.generate"
    assert path.read_text(encoding="utf-8") == render(MODELS[name]), (
        f"{path.name} is out of date: run python -m schemas.generate"
    )


def test_lab_result_schema_names_every_contract_field() -> None:
    schema = json.loads((JSON_DIR / "lab_result.schema.json").read_text(encoding="utf-8"))
    contract = {
        "type",
        "patient_id",
        "analyte",
        "value",
        "unit",
        "collected_at",
        "resulted_at",
        "status",
        "accession",
        "source",
        "loinc",
        "method",
        "detected",
        "sensitivity",
    }
    assert contract <= set(schema["properties"])
    assert {"patient_id", "collected_at"} <= set(schema["required"])
