"""The FHIR gateway's answers, pure: OperationOutcomes, response Bundles, the
CapabilityStatement, and their JSON or XML bodies (docs/feeds.md section 2).

FHIR XML (``application/fhir+xml``) is read and written through fhir.resources (R4B models over
lxml): a body is parsed with entities, DTDs and network access off (no XXE, no "billion laughs"),
validated as a Bundle or Observation, and handed on as the same JSON structure a JSON body gives,
so one code path reads both. The answer is in the format the client asked for: ``_format`` or
``Accept`` naming XML gets XML, JSON or anything-goes gets JSON, and an ``Accept`` that allows
neither gets ``406``.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from schemas.base import utc_isoformat
from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.ingest.fhir.observation import FhirParse
from streams.ingest.normalise import ResultItem, Unmapped

FHIR_JSON: Final = "application/fhir+json"
FHIR_XML: Final = "application/fhir+xml"
JSON_TYPES: Final = frozenset({FHIR_JSON, "application/json"})
XML_TYPES: Final = frozenset({FHIR_XML, "application/xml", "text/xml"})
#: Code system of our reject reasons in ``OperationOutcome.issue.details``.
REJECT_REASON_SYSTEM: Final = "urn:carwatch:reject-reason"
#: Seconds a client should wait before resending after a 503 or 429.
RETRY_AFTER_S: Final = 5

Endpoint = Literal["observation", "bundle"]
Format = Literal["json", "xml"]

#: FHIR IssueType (http://hl7.org/fhir/issue-type) per reject reason.
ISSUE_TYPES: Final[dict[RejectReason, str]] = {
    RejectReason.MISSING_FIELD: "required",
    RejectReason.MISSING_VALUE: "required",
    RejectReason.MISSING_PATIENT_ID: "required",
    RejectReason.INVALID_FIELD: "value",
    RejectReason.NEGATIVE_VALUE: "value",
    RejectReason.IMPLAUSIBLE_VALUE: "value",
    RejectReason.UNKNOWN_UNIT: "value",
    RejectReason.UNKNOWN_VOCABULARY: "value",
    RejectReason.UNKNOWN_ANALYTE: "value",
    RejectReason.INVALID_TIMESTAMP: "value",
    RejectReason.NAIVE_DATETIME: "value",
    RejectReason.UNSUPPORTED_MESSAGE: "not-supported",
}


def issue_type(reason: RejectReason) -> str:
    return ISSUE_TYPES.get(reason, "invalid")


# --- OperationOutcome and responses (pure) --------------------------------------------------------


def issue(
    severity: str,
    code: str,
    diagnostics: str,
    *,
    reason: RejectReason | None = None,
    details: str | None = None,
    expression: str | None = None,
) -> dict[str, Any]:
    """One ``OperationOutcome.issue``."""
    entry: dict[str, Any] = {"severity": severity, "code": code}
    if reason is not None:
        entry["details"] = {
            "coding": [{"system": REJECT_REASON_SYSTEM, "code": reason.value}],
            "text": details or diagnostics,
        }
    entry["diagnostics"] = diagnostics
    if expression:
        entry["expression"] = [expression]
    return entry


def operation_outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, FHIR JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


_LOCATION = re.compile(r"^(?:entry (\d+)|Observation)(?: component (\d+))?$")


def expression_for(location: str, field_name: str | None) -> str:
    """FHIRPath of a result's element: ``entry 3 component 1`` + ``value[x]`` →
    ``Bundle.entry[3].resource.component[1].value[x]``."""
    match = _LOCATION.match(location)
    if match is None:
        return location
    entry, component = match.groups()
    base = "Observation" if entry is None else f"Bundle.entry[{entry}].resource"
    if not field_name:
        return base
    if component is not None and field_name.split(".")[0] in ("value[x]", "valueQuantity", "code"):
        base = f"{base}.component[{component}]"
    return f"{base}.{field_name}"


def _entry_index(location: str) -> int | None:
    match = _LOCATION.match(location)
    return int(match.group(1)) if match and match.group(1) is not None else None


def rejection_issue(rejection: Rejection, location: str | None) -> dict[str, Any]:
    detail = rejection.details[0]
    where = f"{location}: " if location else ""
    return issue(
        "error",
        issue_type(detail.reason),
        f"{where}{detail.reason.value}: {detail.message}",
        reason=detail.reason,
        details=detail.message,
        expression=expression_for(location, detail.field) if location else None,
    )


def _summary(stored: int, unmapped: int, rejected: int) -> str:
    text = f"{stored} result(s) stored, {unmapped} not monitored"
    if rejected:
        text += f", {rejected} rejected (sent to the dead-letter topic; do not resend unchanged)"
    return text


def document_rejection_status(rejection: Rejection, *, wrong_endpoint: bool) -> int:
    """400 for what cannot be read (or was sent to the wrong endpoint), 422 for a valid resource
    we do not take."""
    if wrong_endpoint or rejection.reason is not RejectReason.UNSUPPORTED_MESSAGE:
        return 400
    return 422


def decide_response(
    endpoint: Endpoint,
    document: dict[str, Any] | None,
    parsed: FhirParse,
    *,
    wrong_endpoint: bool = False,
) -> Answer:
    """The answer for a request whose records Kafka has acknowledged."""
    if parsed.document_rejection is not None:
        rejection = parsed.document_rejection
        return Answer(
            document_rejection_status(rejection, wrong_endpoint=wrong_endpoint),
            operation_outcome(rejection_issue(rejection, None)),
        )
    items = parsed.items
    stored = sum(1 for i in items if isinstance(i.outcome, LabResult))
    unmapped = sum(1 for i in items if isinstance(i.outcome, Unmapped))
    rejected = [i for i in items if isinstance(i.outcome, Rejection)]
    summary = issue("information", "informational", _summary(stored, unmapped, len(rejected)))
    if rejected:
        issues = [
            rejection_issue(i.outcome, i.location)
            for i in rejected
            if isinstance(i.outcome, Rejection)
        ]
        return Answer(422, operation_outcome(*issues, summary))
    if endpoint == "observation":
        if stored == 0 and unmapped:
            reasons = "; ".join(i.outcome.reason for i in items if isinstance(i.outcome, Unmapped))
            summary = issue("information", "informational", f"not monitored: {reasons}")
        return Answer(201 if stored else 200, operation_outcome(summary))
    bundle_type = (document or {}).get("type")
    if bundle_type in ("batch", "transaction") and document is not None:
        return Answer(200, _response_bundle(document, items))
    return Answer(200, operation_outcome(summary))


def _response_bundle(document: dict[str, Any], items: list[ResultItem]) -> dict[str, Any]:
    by_entry: dict[int, list[ResultItem]] = {}
    for item in items:
        index = _entry_index(item.location)
        if index is not None:
            by_entry.setdefault(index, []).append(item)
    entries = []
    for index, request_entry in enumerate(document.get("entry") or []):
        resource = request_entry.get("resource") if isinstance(request_entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        outcomes = by_entry.get(index, [])
        stored = sum(1 for i in outcomes if isinstance(i.outcome, LabResult))
        if kind != "Observation":
            status = "200 OK"
            text = "not stored: CAR-T Watch takes Observations (other resources only resolve references)"
        elif stored:
            status, text = "201 Created", f"{stored} result(s) stored"
        else:
            status = "200 OK"
            text = "not monitored: " + "; ".join(
                i.outcome.reason for i in outcomes if isinstance(i.outcome, Unmapped)
            )
        entries.append(
            {
                "response": {
                    "status": status,
                    "outcome": operation_outcome(issue("information", "informational", text)),
                }
            }
        )
    kind = "transaction-response" if document.get("type") == "transaction" else "batch-response"
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def broker_unavailable_answer(detail: str = "") -> Answer:
    text = "broker unavailable: nothing of this request was stored; retry"
    return Answer(
        503,
        operation_outcome(issue("error", "transient", f"{text} ({detail})" if detail else text)),
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def capability_statement(date: datetime) -> dict[str, Any]:
    """The minimal CapabilityStatement of ``GET /metadata``."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": utc_isoformat(date),
        "publisher": "CAR-T Watch",
        "kind": "instance",
        "software": {"name": "CAR-T Watch FHIR gateway"},
        "implementation": {
            "description": "Receives laboratory Observations for CAR-T Watch (write only)"
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json", FHIR_XML, "xml"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "POST Observation; POST a Bundle (collection, batch, transaction, searchset) "
                    "to the base. Results are stored once Kafka acknowledged them."
                ),
                "resource": [
                    {
                        "type": "Observation",
                        "interaction": [{"code": "create"}],
                    }
                ],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
            }
        ],
    }


def negotiate(format_param: str | None, accept: str | None) -> Format | None:
    """The answer's format from ``_format`` (wins) or ``Accept``; ``None``: nothing acceptable."""
    wanted = (format_param or "").lower()
    if wanted:
        return "xml" if "xml" in wanted else "json" if "json" in wanted else None
    ranges = [part.split(";")[0].strip().lower() for part in (accept or "*/*").split(",")]
    for media in ranges:
        if media in XML_TYPES:
            return "xml"
        if media in JSON_TYPES or media in ("*/*", "application/*", ""):
            return "json"
    return None


def render(body: dict[str, Any], fmt: Format) -> tuple[bytes, str]:
    """The body and its content type; XML through the fhir.resources model of the resource."""
    if fmt == "json":
        return json.dumps(body, ensure_ascii=False).encode(), FHIR_JSON
    model = _MODELS[body["resourceType"]]
    xml: bytes = model.model_validate(body).model_dump_xml()
    return xml, FHIR_XML


def read_xml(body: bytes) -> dict[str, Any]:
    """An XML Bundle or Observation as the JSON structure; ``ValueError`` with one line."""
    from lxml import etree

    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not XML: {exc}"[:300]) from None
    if root.getroottree().docinfo.doctype:
        raise ValueError("XML with a DOCTYPE is not accepted")
    kind = etree.QName(root).localname
    model = _MODELS.get(kind) if kind in ("Bundle", "Observation") else None
    if model is None:
        raise ValueError(f"resource {kind[:40]!r} is neither Observation nor Bundle")
    try:
        resource = model.model_validate_xml(body, xmlparser=parser)
    except Exception as exc:  # the library raises many kinds for malformed content
        raise ValueError(f"invalid FHIR XML: {type(exc).__name__}: {exc}"[:300]) from None
    document: dict[str, Any] = resource.model_dump(mode="json")
    return document


def _load_models() -> dict[str, Any]:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.operationoutcome import OperationOutcome

    return {
        "Bundle": Bundle,
        "CapabilityStatement": CapabilityStatement,
        "Observation": Observation,
        "OperationOutcome": OperationOutcome,
    }


_MODELS: Final = _load_models()
