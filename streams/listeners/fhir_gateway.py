"""FHIR R4 over HTTP: the ``carwatch fhir-gateway`` (docs/feeds.md section 2).

An aiohttp application (default bind ``127.0.0.1:8080``) with

- ``POST /fhir/Observation`` — one Observation;
- ``POST /fhir`` — a Bundle of type ``collection``, ``batch``, ``transaction`` or ``searchset``;
- ``GET /fhir/metadata`` (also ``GET /metadata``) — a minimal CapabilityStatement.

Bodies are ``application/fhir+json`` or ``application/json`` (else ``415``); the documents are
read by ``streams.ingest.fhir.observation.parse_fhir`` (one outcome per result). As on the MLLP listener,
accepted results go to ``carwatch.labs``, rejected results and unusable documents to
``carwatch.deadletter`` (raw + reasons), results we do not monitor are only counted — and the
answer is sent **only after Kafka acknowledged every record** of the request:

====================================================  ======  ===================================
situation                                             status  body
====================================================  ======  ===================================
Observation stored                                    201     OperationOutcome (information)
Observation not monitored (unmapped code, registered) 200     OperationOutcome (information)
Bundle ``batch``/``transaction``, nothing rejected    200     ``batch-response`` /
                                                              ``transaction-response`` Bundle,
                                                              one entry per request entry
Bundle ``collection``/``searchset``, nothing rejected 200     OperationOutcome (information)
some or all results rejected                          422     OperationOutcome: one ``error``
                                                              issue per rejected result, one
                                                              ``information`` issue with counts;
                                                              the accepted results *are* stored
not JSON, invalid Bundle, body not the endpoint's     400     OperationOutcome (``invalid`` …)
resource type
valid resource we do not take (Bundle ``document``,   422     OperationOutcome (``not-supported``)
``message``, ``history``)
wrong ``Content-Type``                                415     OperationOutcome (``not-supported``)
body over ``client_max_size``                         413     OperationOutcome (``too-costly``)
Kafka did not acknowledge within the timeout          503     OperationOutcome (``transient``),
                                                              ``Retry-After``: nothing of the
                                                              request is confirmed, resend it
====================================================  ======  ===================================

Why ``422`` for partly rejected Bundles rather than a ``200`` batch-response with error entries:
interface engines decide on the HTTP status, and a ``200`` would read as "all delivered". As with
HL7 ``AE``: the accepted results are stored, do not resend unchanged; a resend is harmless
(duplicates are ignored) but the rejected results will be rejected again. A ``transaction`` is
not atomic here (docs/feeds.md: each result is checked on its own).

In an issue, ``code`` is the FHIR issue type (``required``, ``value``, ``invalid``,
``not-supported``), ``details.coding`` our reject reason (system ``REJECT_REASON_SYSTEM``),
``details.text`` and ``diagnostics`` the explanation, ``expression`` the element
(``Bundle.entry[3].resource.valueQuantity.code``). Nothing is logged about a request beyond
counts, reason codes and statuses: no patient data.
"""

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from aiohttp import web

from schemas.base import utc_isoformat
from schemas.lab_result import LabResult
from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.ingest.fhir.observation import (
    DEFAULT_FHIR_CONFIG,
    FhirConfig,
    FhirParse,
    parse_fhir,
)
from streams.ingest.normalise import ResultItem, Unmapped
from streams.listeners.publisher import (
    BrokerUnavailable,
    LabPublisher,
    Plan,
    Publisher,
    count_plan,
    feed_config,
    plan_items,
    plan_rejection,
    prepare_listener,
    serve,
    wait_for_signal,
)
from streams.metrics import FHIR_GATEWAY, ListenerMetrics

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
#: Largest accepted request body (aiohttp answers 413 above it).
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
FHIR_JSON: Final = "application/fhir+json"
ACCEPTED_CONTENT_TYPES: Final = frozenset({FHIR_JSON, "application/json"})
#: Code system of our reject reasons in ``OperationOutcome.issue.details``.
REJECT_REASON_SYSTEM: Final = "urn:carwatch:reject-reason"
#: Seconds a client should wait before resending after a 503.
RETRY_AFTER_S: Final = 5
ADAPTER: Final = "fhir"

Endpoint = Literal["observation", "bundle"]

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
        "format": [FHIR_JSON, "json"],
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


# --- the application ------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _load_json(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` (``parse_fhir`` then explains why)."""
    try:
        document = json.loads(body.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _answer(answer: Answer) -> web.Response:
    return web.json_response(
        answer.body, status=answer.status, headers=answer.headers, content_type=FHIR_JSON
    )


@dataclass
class FhirGateway:
    """The request handlers; ``app()`` builds the aiohttp application."""

    publisher: Publisher
    config: FhirConfig = DEFAULT_FHIR_CONFIG
    policy: Policy = DEFAULT_POLICY
    metrics: ListenerMetrics | None = None
    clock: Callable[[], datetime] = _utc_now
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    source: str = ADAPTER
    started_at: datetime = field(default_factory=_utc_now)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[_fhir_errors])
        app.router.add_post("/fhir/Observation", self.post_observation)
        app.router.add_post("/fhir", self.post_bundle)
        app.router.add_post("/fhir/", self.post_bundle)
        app.router.add_get("/fhir/metadata", self.metadata)
        app.router.add_get("/metadata", self.metadata)
        return app

    async def post_observation(self, request: web.Request) -> web.Response:
        return await self._post(request, "observation")

    async def post_bundle(self, request: web.Request) -> web.Response:
        return await self._post(request, "bundle")

    async def metadata(self, request: web.Request) -> web.Response:
        return _answer(Answer(200, capability_statement(self.started_at)))

    async def _post(self, request: web.Request, endpoint: Endpoint) -> web.Response:
        if request.content_type not in ACCEPTED_CONTENT_TYPES:
            return _answer(
                Answer(
                    415,
                    operation_outcome(
                        issue(
                            "error",
                            "not-supported",
                            f"Content-Type {request.content_type or '(none)'} is not accepted; "
                            f"send {FHIR_JSON} or application/json",
                        )
                    ),
                )
            )
        body = await request.read()
        received_at = self.clock()
        document = _load_json(body)
        wanted = "Observation" if endpoint == "observation" else "Bundle"
        wrong_endpoint = False
        kind = document.get("resourceType") if document is not None else None
        if isinstance(kind, str) and kind != wanted:
            wrong_endpoint = True
            shown = kind[:40]
            parsed = FhirParse(
                Rejection.of(
                    RejectReason.UNSUPPORTED_MESSAGE,
                    f"POST {request.path} takes a{'n' if wanted[0] == 'O' else ''} {wanted}, "
                    f"got resourceType {shown!r}",
                    "resourceType",
                )
            )
        else:
            parsed = await asyncio.to_thread(
                parse_fhir, document if document is not None else body, self.config, self.policy
            )
        plan = self._plan(parsed, body, request.path, received_at)
        try:
            await self.publisher.publish(plan.results, plan.dead_letters)
        except BrokerUnavailable as exc:
            log.warning("POST %s: 503, not acknowledged (%s)", request.path, exc)
            return _answer(broker_unavailable_answer())
        count_plan(self.metrics, plan, ADAPTER)
        answer = decide_response(endpoint, document, parsed, wrong_endpoint=wrong_endpoint)
        log.log(
            logging.DEBUG if answer.status < 300 else logging.INFO,
            "POST %s: %d (%d published, %d dead-lettered, %d not monitored)",
            request.path,
            answer.status,
            len(plan.results),
            plan.rejected,
            plan.unmapped,
        )
        return _answer(answer)

    def _plan(self, parsed: FhirParse, body: bytes, path: str, received_at: datetime) -> Plan:
        if parsed.document_rejection is not None:
            return plan_rejection(
                parsed.document_rejection,
                body.decode("utf-8", errors="replace"),
                source=self.source,
                location=path,
                received_at=received_at,
            )
        return plan_items(parsed.items, source=self.source, prefix=path, received_at=received_at)


_STATUS_ISSUES: Final = {
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _fhir_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors raised by aiohttp (404, 405, 413) as OperationOutcomes; a bug as a 500 that
    confirms nothing."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_ISSUES.get(exc.status, "processing")
        return _answer(
            Answer(
                exc.status,
                operation_outcome(issue("error", code, f"{exc.status} {exc.reason}")),
                {k: v for k, v in exc.headers.items() if k == "Allow"},
            )
        )
    except Exception:
        log.exception("POST %s: internal error", request.path)
        return _answer(
            Answer(
                500,
                operation_outcome(
                    issue("error", "exception", "internal error: nothing was confirmed; retry")
                ),
            )
        )


async def run(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    publisher: LabPublisher,
    config: FhirConfig = DEFAULT_FHIR_CONFIG,
    policy: Policy = DEFAULT_POLICY,
    metrics: ListenerMetrics | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """``carwatch fhir-gateway``: serve until SIGINT/SIGTERM (or ``stop``), then close."""
    async with publisher:
        gateway = FhirGateway(publisher, config, policy, metrics, max_body_bytes=max_body_bytes)
        runner = web.AppRunner(
            gateway.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=publisher.timeout_s + 1,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = int(runner.addresses[0][1]) if runner.addresses else port
            if ready is not None:
                ready(
                    f"listening on http://{host}:{bound}/fhir (FHIR R4); Kafka "
                    f"{publisher.bootstrap} ({publisher.labs_topic}, {publisher.deadletter_topic})"
                )
            await (stop.wait() if stop is not None else wait_for_signal())
        finally:
            await runner.cleanup()


def main(
    *,
    host: str,
    port: int,
    broker_url: str | None,
    labs_topic: str | None,
    deadletter_topic: str | None,
    publish_timeout: float,
    feed_config_path: str | None,
    policy: Policy,
    max_body_bytes: int,
    metrics_port: int | None,
    log_level: str,
    ready: Callable[[str], None] | None = None,
) -> None:
    """The ``carwatch fhir-gateway`` command; ``ListenerSetupError`` when it cannot start."""
    config = feed_config(feed_config_path, FhirConfig)
    publisher, metrics = prepare_listener(
        FHIR_GATEWAY,
        broker_url,
        labs_topic,
        deadletter_topic,
        publish_timeout,
        metrics_port,
        log_level,
        ready,
    )
    serve(
        run(
            host=host,
            port=port,
            publisher=publisher,
            config=config,
            policy=policy,
            metrics=metrics,
            max_body_bytes=max_body_bytes,
            ready=ready,
        ),
        host,
        port,
    )
