"""Generate the JSON Schemas of the wire contracts into ``schemas/json/``.

Run ``python -m schemas.generate`` after changing a model; ``tests/unit/schemas/test_json_schemas.py``
fails while the files are out of date.
"""

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.ack import AckEvent
from schemas.alert import AlertEvent
from schemas.clinical import ClinicalEvent, Infusion
from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult

JSON_DIR = Path(__file__).parent / "json"
MODELS: dict[str, type[BaseModel]] = {
    "lab_result": LabResult,
    "infusion": Infusion,
    "clinical_event": ClinicalEvent,
    "alert_event": AlertEvent,
    "dead_letter": DeadLetter,
    "ack_event": AckEvent,
}


def render(model: type[BaseModel]) -> str:
    outputs = (AlertEvent, DeadLetter)
    schema = model.model_json_schema(mode="serialization" if model in outputs else "validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, model in MODELS.items():
        (JSON_DIR / f"{name}.schema.json").write_text(render(model), encoding="utf-8")
    print(f"wrote {len(MODELS)} schemas to {JSON_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
