"""FHIR gateway (streams/listeners/fhir_gateway.py) over aiohttp's test server, fake publisher."""

import copy
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from prometheus_client import CollectorRegistry

from schemas.deadletter import DeadLetter
from schemas.lab_result import LabResult
from schemas.vocab import RejectReason
from streams.ingest.fhir.observation import FhirConfig
from streams.listeners.fhir_gateway import FhirGateway, expression_for
from streams.listeners.publisher import BrokerUnavailable
from streams.metrics import ListenerMetrics

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
FHIR = {"Content-Type": "application/fhir+json"}


class FakePublisher:
    def __init__(self) -> None:
        self.fail = False
        self.results: list[LabResult] = []
        self.dead_letters: list[tuple[DeadLetter, str | None]] = []

    async def publish(
        self, results: Sequence[LabResult], dead_letters: Sequence[tuple[DeadLetter, str | None]]
    ) -> None:
        if self.fail:
            raise BrokerUnavailable("Kafka at 127.0.0.1:1 is unavailable")
        self.results += results
        self.dead_letters += dead_letters


def observation(**fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "identifier": [{"value": "ACC-1"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "subject": {"reference": "Patient/P001"},
        "effectiveDateTime": "2026-01-05T08:00:00+01:00",
        "valueQuantity": {"value": 0.42, "system": "http://unitsofmeasure.org", "code": "10*9/L"},
    }
    resource.update(fields)
    return resource


def bundle(*resources: dict[str, Any], kind: str = "batch") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


@pytest.fixture
async def client(
    fhir_config: FhirConfig,
) -> AsyncIterator[tuple[TestClient[Any, Any], FakePublisher, ListenerMetrics]]:
    publisher = FakePublisher()
    metrics = ListenerMetrics(CollectorRegistry())
    gateway = FhirGateway(
        publisher, fhir_config, metrics=metrics, clock=lambda: NOW, max_body_bytes=64 * 1024
    )
    async with TestClient(TestServer(gateway.app())) as test_client:
        yield test_client, publisher, metrics


Client = tuple[TestClient[Any, Any], FakePublisher, ListenerMetrics]


async def post(
    client: Client, path: str, body: Any, headers: dict[str, str] = FHIR
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client[0].post(path, data=data, headers=headers)
    assert response.content_type == "application/fhir+json"
    return response.status, await response.json(content_type=None)


def outcome(body: dict[str, Any]) -> OperationOutcome:
    return OperationOutcome.model_validate(body)


async def test_observation_stored_is_201(client: Client) -> None:
    status, body = await post(client, "/fhir/Observation", observation())
    assert status == 201
    assert outcome(body).issue[0].severity == "information"
    assert [r.value for r in client[1].results] == [420]


async def test_application_json_is_accepted_too(client: Client) -> None:
    status, _ = await post(
        client,
        "/fhir/Observation",
        observation(),
        {"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 201


async def test_unmapped_observation_is_200_not_stored(client: Client) -> None:
    glucose = observation(code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]})
    status, body = await post(client, "/fhir/Observation", glucose)
    assert status == 200 and "not monitored" in body["issue"][0]["diagnostics"]
    assert client[1].results == [] and client[1].dead_letters == []


async def test_rejected_observation_is_422_and_dead_lettered(client: Client) -> None:
    bad = observation(
        valueQuantity={"value": 0.42, "system": "http://unitsofmeasure.org", "code": "g/L"}
    )
    status, body = await post(client, "/fhir/Observation", bad)
    assert status == 422
    error = outcome(body).issue[0]
    assert (error.severity, error.code) == ("error", "value")
    assert error.details.coding[0].code == "unknown_unit"
    assert error.expression == ["Observation.valueQuantity.code"]
    assert "unknown_unit" in error.diagnostics
    ((dead, key),) = client[1].dead_letters
    assert key == "P001" and dead.reason is RejectReason.UNKNOWN_UNIT and dead.source == "fhir"
    assert dead.location == "/fhir/Observation:Observation"
    metrics = client[2].registry.get_sample_value
    assert metrics("carwatch_deadletter_messages_total", {"topic": "fhir"}) == 1
    assert metrics("carwatch_rejected_total", {"reason": "unknown_unit"}) == 1


async def test_collection_bundle_all_accepted_is_200(client: Client, data_dir: Path) -> None:
    document = json.loads((data_dir / "fhir/full_panel.json").read_text())
    status, body = await post(client, "/fhir", document)
    assert status == 200
    assert outcome(body).issue[0].diagnostics.startswith("18 result(s) stored, 0 not monitored")
    assert len(client[1].results) == 18
    assert (
        client[2].registry.get_sample_value(
            "carwatch_results_total", {"analyte": "anc", "outcome": "accepted"}
        )
        == 1
    )


@pytest.mark.parametrize("kind", ["batch", "transaction"])
async def test_batch_all_accepted_answers_a_response_bundle(client: Client, kind: str) -> None:
    glucose = observation(code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]})
    patient = {"resourceType": "Patient", "id": "P001"}
    status, body = await post(client, "/fhir", bundle(observation(), glucose, patient, kind=kind))
    assert status == 200
    response = Bundle.model_validate(body)
    assert response.type == f"{kind}-response"
    assert [e.response.status for e in response.entry] == ["201 Created", "200 OK", "200 OK"]
    assert len(client[1].results) == 1


async def test_bundle_with_rejections_is_422_listing_every_one(
    client: Client, data_dir: Path
) -> None:
    document = json.loads((data_dir / "fhir/rejections.json").read_text())
    status, body = await post(client, "/fhir", document)
    assert status == 422
    issues = outcome(body).issue
    errors = [i for i in issues if i.severity == "error"]
    assert len(errors) == len(client[1].dead_letters) > 0
    assert all(i.expression and i.expression[0].startswith("Bundle.entry[") for i in errors)
    assert all(i.code in {"invalid", "required", "value", "not-supported"} for i in errors)
    assert issues[-1].severity == "information"
    assert issues[-1].diagnostics.startswith(f"{len(client[1].results)} result(s) stored")


async def test_not_json_is_400_and_dead_lettered(client: Client) -> None:
    status, body = await post(client, "/fhir", b"{not json")
    assert status == 400
    assert outcome(body).issue[0].details.coding[0].code == "malformed_fhir"
    ((dead, key),) = client[1].dead_letters
    assert dead.raw == "{not json" and key is None


async def test_wrong_resource_for_the_endpoint_is_400(client: Client) -> None:
    status, body = await post(client, "/fhir/Observation", bundle(observation()))
    assert status == 400 and "takes an Observation" in body["issue"][0]["diagnostics"]
    status, body = await post(client, "/fhir", observation())
    assert status == 400 and "takes a Bundle" in body["issue"][0]["diagnostics"]
    assert client[1].results == []


async def test_bundle_type_not_taken_is_422_not_supported(client: Client) -> None:
    status, body = await post(client, "/fhir", bundle(observation(), kind="history"))
    assert status == 422
    assert outcome(body).issue[0].code == "not-supported"


async def test_wrong_content_type_is_415(client: Client) -> None:
    status, body = await post(
        client, "/fhir/Observation", observation(), {"Content-Type": "text/plain"}
    )
    assert status == 415 and outcome(body).issue[0].code == "not-supported"
    assert client[1].dead_letters == []


async def test_broker_unavailable_is_503_transient(client: Client) -> None:
    client[1].fail = True
    response = await client[0].post(
        "/fhir/Observation", data=json.dumps(observation()), headers=FHIR
    )
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    issue = outcome(await response.json(content_type=None)).issue[0]
    assert (issue.severity, issue.code) == ("error", "transient")
    assert client[2].registry.get_sample_value(
        "carwatch_results_total", {"analyte": "anc", "outcome": "accepted"}
    ) in (None, 0)


async def test_body_too_large_is_413(client: Client) -> None:
    big = observation(note=[{"text": "x" * 70_000}])
    status, body = await post(client, "/fhir/Observation", big)
    assert status == 413 and outcome(body).issue[0].code == "too-costly"


async def test_unknown_path_and_method(client: Client) -> None:
    response = await client[0].get("/fhir/Patient/1")
    assert response.status == 404
    outcome(await response.json(content_type=None))
    response = await client[0].get("/fhir/Observation")
    assert response.status == 405


@pytest.mark.parametrize("path", ["/metadata", "/fhir/metadata"])
async def test_capability_statement(client: Client, path: str) -> None:
    response = await client[0].get(path)
    assert response.status == 200
    statement = CapabilityStatement.model_validate(await response.json(content_type=None))
    assert statement.fhirVersion == "4.0.1"
    assert statement.rest[0].resource[0].type == "Observation"


def test_expressions() -> None:
    assert expression_for("Observation", "valueQuantity.code") == "Observation.valueQuantity.code"
    assert expression_for("entry 3", None) == "Bundle.entry[3].resource"
    assert expression_for("entry 3 component 1", "value[x]") == (
        "Bundle.entry[3].resource.component[1].value[x]"
    )
    assert expression_for("entry 3 component 1", "status") == "Bundle.entry[3].resource.status"


async def test_components_are_published_separately(client: Client) -> None:
    panel = observation(
        valueQuantity=None,
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {
                    "value": value,
                    "system": "http://unitsofmeasure.org",
                    "code": "/uL",
                },
            }
            for code, value in (("751-8", 400), ("731-0", 300))
        ],
    )
    del panel["valueQuantity"]
    status, _ = await post(client, "/fhir/Observation", copy.deepcopy(panel))
    assert status == 201
    assert [r.analyte.value for r in client[1].results if r.analyte] == ["anc", "alc"]
