"""FHIR R4 over HTTP: the ``carwatch fhir-gateway`` (docs/feeds.md section 2).

An aiohttp application (default bind ``127.0.0.1:8080``) with

- ``POST /fhir/Observation`` — one Observation;
- ``POST /fhir`` — a Bundle of type ``collection``, ``batch``, ``transaction`` or ``searchset``;
- ``GET /fhir/metadata`` (also ``GET /metadata``) — a minimal CapabilityStatement.

Bodies are ``application/fhir+json``/``application/json`` or ``application/fhir+xml``
(``application/xml``, ``text/xml``), else ``415``; answers are JSON or XML as the client asks
(``streams.listeners.fhir_answers``; ``406`` when ``Accept`` allows neither). The documents are
read by ``streams.ingest.fhir.observation.parse_fhir`` (one outcome per result) in the parse
pool (``streams.listeners.pool``), never on the event loop. Every body is written raw to the
message store (``carwatch.inbound``) before it is answered. As on the MLLP listener,
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
``Accept`` names neither JSON nor XML                 406     OperationOutcome (``not-supported``)
no bearer token (when ``--token-env`` is set)         401     OperationOutcome (``login``),
                                                              ``WWW-Authenticate: Bearer``
a wrong bearer token                                  403     OperationOutcome (``forbidden``)
body over ``max_body_bytes``                          413     OperationOutcome (``too-costly``)
parse pool full (more requests than it queues)        429     OperationOutcome (``throttled``),
                                                              ``Retry-After``
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
counts, reason codes and statuses: no patient data. A bug answers ``400`` (not ``500``): an
interface engine retries 5xx forever, so a body that trips a bug would never leave its queue;
it is dead-lettered like any rejected input.
"""

import asyncio
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from schemas.records import Rejection
from schemas.vocab import RejectReason
from streams.core.policy import DEFAULT_POLICY, Policy
from streams.ingest.fhir.observation import DEFAULT_FHIR_CONFIG, FhirConfig, FhirParse
from streams.listeners.connections import (
    ConnectionGuard,
    ListenerLimits,
    TlsFiles,
    serve_guarded,
    warn_if_exposed,
)
from streams.listeners.fhir_answers import (
    FHIR_JSON,
    JSON_TYPES,
    RETRY_AFTER_S,
    XML_TYPES,
    Answer,
    Endpoint,
    Format,
    broker_unavailable_answer,
    capability_statement,
    decide_response,
    issue,
    negotiate,
    operation_outcome,
    render,
)
from streams.listeners.jobs import FhirOutcome, fhir_job, plan_fhir
from streams.listeners.plans import Plan
from streams.listeners.pool import ParsePool, ParseTimeout
from streams.listeners.publisher import (
    BrokerUnavailable,
    KafkaOptions,
    LabPublisher,
    Publisher,
    count_plan,
    feed_config,
    prepare_listener,
    serve,
    wait_for_signal,
)
from streams.metrics import FHIR_GATEWAY, ListenerMetrics

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
#: Largest accepted request body.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S: Final = 60.0
ADAPTER: Final = "fhir"
ACCEPTED_CONTENT_TYPES: Final = JSON_TYPES | XML_TYPES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _error(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, operation_outcome(issue("error", code, text)), headers or {})


@dataclass
class FhirGateway:
    """The request handlers; ``app()`` builds the aiohttp application."""

    publisher: Publisher
    pool: ParsePool
    config: FhirConfig = DEFAULT_FHIR_CONFIG
    policy: Policy = DEFAULT_POLICY
    metrics: ListenerMetrics | None = None
    clock: Callable[[], datetime] = _utc_now
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout_s: float = 30.0
    token: str | None = None
    source: str = ADAPTER
    started_at: datetime = field(default_factory=_utc_now)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body_bytes, middlewares=[self._answers, self._auth]
        )
        app.router.add_post("/fhir/Observation", self.post_observation)
        app.router.add_post("/fhir", self.post_bundle)
        app.router.add_post("/fhir/", self.post_bundle)
        app.router.add_get("/fhir/metadata", self.metadata)
        app.router.add_get("/metadata", self.metadata)
        return app

    async def post_observation(self, request: web.Request) -> web.StreamResponse:
        return await self._post(request, "observation")

    async def post_bundle(self, request: web.Request) -> web.StreamResponse:
        return await self._post(request, "bundle")

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        return self._respond(request, Answer(200, capability_statement(self.started_at)))

    async def _post(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        answer_format = _format(request)
        if answer_format is None:
            return self._respond(
                request,
                _error(406, "not-supported", "Accept allows neither FHIR JSON nor FHIR XML"),
            )
        if request.content_type not in ACCEPTED_CONTENT_TYPES:
            text = (
                f"Content-Type {request.content_type or '(none)'} is not accepted; send "
                f"{FHIR_JSON} or application/fhir+xml"
            )
            return self._respond(request, _error(415, "not-supported", text))
        if self.pool.full:
            text = "too many requests in progress; retry"
            retry = {"Retry-After": str(RETRY_AFTER_S)}
            return self._respond(request, _error(429, "throttled", text, retry))
        try:
            async with asyncio.timeout(self.read_timeout_s):
                body = await request.read()
        except TimeoutError:
            return self._read_timed_out(request)
        except web.HTTPRequestEntityTooLarge:
            return await self._too_large(request, answer_format)
        return await self._handle(request, endpoint, body, answer_format)

    async def _too_large(self, request: web.Request, answer_format: Format) -> web.StreamResponse:
        """A body over the limit: 413, and a dead letter saying so (the body is not kept)."""
        size = request.content_length
        text = f"body of {size if size is not None else 'unknown'} bytes is over the limit of "
        text += f"{self.max_body_bytes} bytes"
        parsed = FhirParse(Rejection.of(RejectReason.MALFORMED_FHIR, text))
        plan = plan_fhir(
            parsed,
            b"",
            source=self.source,
            path=request.path,
            received_at=self.clock(),
            inbound=None,
        )
        try:
            await self._publish_plan(plan)
        except BrokerUnavailable:
            return self._respond(request, broker_unavailable_answer())
        count_plan(self.metrics, plan, ADAPTER)
        return self._respond(request, _error(413, "too-costly", f"{text}; do not resend unchanged"))

    def _read_timed_out(self, request: web.Request) -> web.StreamResponse:
        """A body that does not arrive within the read timeout: the connection is closed."""
        log.warning("POST %s: body not received within %.0f s", request.path, self.read_timeout_s)
        if self.metrics is not None:
            self.metrics.connections.labels(ADAPTER, "timeout").inc()
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=400)

    async def _handle(
        self, request: web.Request, endpoint: Endpoint, body: bytes, answer_format: Format
    ) -> web.StreamResponse:
        received_at = self.clock()
        message_id = uuid.uuid4().hex
        xml = request.content_type in XML_TYPES
        store = asyncio.ensure_future(
            self.publisher.store_inbound(
                body, self.config.source or ADAPTER, request.content_type, received_at, message_id
            )
        )
        args = (endpoint, request.path, self.config, self.policy, self.source)
        try:
            outcome = await self.pool.run(
                fhir_job, body, xml, answer_format, *args, received_at, message_id
            )
        except ParseTimeout:
            outcome = self._unparsed(body, request.path, answer_format, received_at, message_id)
        except BaseException:
            store.cancel()
            raise
        if self.metrics is not None:
            self.metrics.parse_seconds.labels(ADAPTER).observe(outcome.seconds)
        try:
            await self._stored(store)
            await self._publish(outcome)
        except BrokerUnavailable as exc:
            log.warning("POST %s: 503, not acknowledged (%s)", request.path, exc)
            return self._respond(request, broker_unavailable_answer())
        count_plan(self.metrics, outcome.plan, ADAPTER)
        log.log(
            logging.DEBUG if outcome.status < 300 else logging.INFO,
            "POST %s: %d (%d published, %d dead-lettered, %d not monitored)",
            request.path,
            outcome.status,
            len(outcome.plan.results),
            outcome.plan.rejected,
            outcome.plan.unmapped,
        )
        self._count(outcome.status)
        return web.Response(
            status=outcome.status,
            body=outcome.body,
            headers=outcome.headers,
            content_type=outcome.content_type,
        )

    async def _stored(self, store: "asyncio.Future[str]") -> None:
        try:
            await store
        except BrokerUnavailable:
            if self.metrics is not None:
                self.metrics.publish_failures.labels(ADAPTER, "carwatch.inbound").inc()
            raise
        if self.metrics is not None:
            self.metrics.inbound.labels(ADAPTER).inc()

    async def _publish(self, outcome: FhirOutcome) -> None:
        await self._publish_plan(outcome.plan)

    async def _publish_plan(self, plan: Plan) -> None:
        try:
            await self.publisher.publish(plan)
        except BrokerUnavailable:
            if self.metrics is not None:
                self.metrics.publish_failures.labels(ADAPTER, "carwatch.labs").inc()
            raise

    def _unparsed(
        self, body: bytes, path: str, answer_format: Format, received_at: datetime, message_id: str
    ) -> FhirOutcome:
        """A body the pool could not parse in time: rejected whole (400), dead-lettered."""
        rejection = Rejection.of(
            RejectReason.MALFORMED_FHIR, f"not parsed within {self.pool.timeout_s:g} s"
        )
        parsed = FhirParse(rejection)
        plan = plan_fhir(
            parsed, body, source=self.source, path=path, received_at=received_at, inbound=message_id
        )
        answer = decide_response("bundle", None, parsed)
        rendered, content_type = render(answer.body, answer_format)
        return FhirOutcome(answer.status, rendered, content_type, {}, plan, self.pool.timeout_s)

    def _count(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.messages.labels(ADAPTER, str(status)).inc()

    def _respond(self, request: web.Request, answer: Answer) -> web.Response:
        self._count(answer.status)
        body, content_type = render(answer.body, _format(request) or "json")
        return web.Response(
            status=answer.status, body=body, headers=answer.headers, content_type=content_type
        )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The bearer token, when one is set (the CapabilityStatement stays public)."""
        if self.token is None or request.method == "GET":
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            challenge = {"WWW-Authenticate": 'Bearer realm="carwatch"'}
            return self._respond(
                request, _error(401, "login", "a bearer token is required", challenge)
            )
        if not hmac.compare_digest(presented.strip().encode(), self.token.encode()):
            return self._respond(request, _error(403, "forbidden", "the bearer token is not valid"))
        return await handler(request)

    @web.middleware
    async def _answers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own errors (404, 405, 413) as OperationOutcomes; a body that trips a bug
        is answered 400 and dead-lettered, never 5xx (an engine would resend it forever)."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _STATUS_ISSUES.get(exc.status, "processing")
            headers = {k: v for k, v in exc.headers.items() if k == "Allow"}
            return self._respond(
                request, _error(exc.status, code, f"{exc.status} {exc.reason}", headers)
            )
        except Exception:
            log.exception("POST %s: internal error; answered 400", request.path)
            text = "the request could not be processed (a bug in carwatch); do not resend unchanged"
            return self._respond(request, _error(400, "exception", text))


_STATUS_ISSUES: Final = {
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
}


def _format(request: web.Request) -> Format | None:
    return negotiate(request.query.get("_format"), request.headers.get("Accept"))


async def run(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    publisher: LabPublisher,
    config: FhirConfig = DEFAULT_FHIR_CONFIG,
    policy: Policy = DEFAULT_POLICY,
    metrics: ListenerMetrics | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    limits: ListenerLimits | None = None,
    tls: TlsFiles | None = None,
    token: str | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """``carwatch fhir-gateway``: serve until SIGINT/SIGTERM (or ``stop``), then close."""
    limits = limits or ListenerLimits(idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S)
    pool = limits.pool()
    await pool.start()
    try:
        async with publisher:
            gateway = FhirGateway(
                publisher,
                pool,
                config,
                policy,
                metrics,
                max_body_bytes=max_body_bytes,
                read_timeout_s=limits.read_timeout_s,
                token=token,
            )
            await _serve(
                gateway, host, port, limits.guard(ADAPTER, metrics, tls), publisher, ready, stop
            )
    finally:
        await pool.close()


async def _serve(
    gateway: FhirGateway,
    host: str,
    port: int,
    guard: ConnectionGuard,
    publisher: LabPublisher,
    ready: Callable[[str], None] | None,
    stop: asyncio.Event | None,
) -> None:
    runner = web.AppRunner(
        gateway.app(),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=publisher.timeout_s + 1,
        keepalive_timeout=guard.idle_timeout_s,
    )
    await runner.setup()
    server = None
    try:
        assert runner.server is not None
        server = await serve_guarded(guard, runner.server, host, port)
        bound = int(server.sockets[0].getsockname()[1]) if server.sockets else port
        tls = guard.tls is not None
        warn_if_exposed("FHIR gateway", host, tls)
        if ready is not None:
            scheme = "https" if tls else "http"
            ready(
                f"listening on {scheme}://{host}:{bound}/fhir (FHIR R4"
                f"{', bearer token' if gateway.token else ''}); Kafka {publisher.bootstrap} "
                f"({publisher.labs_topic}, {publisher.deadletter_topic}, {publisher.inbound_topic})"
            )
        await (stop.wait() if stop is not None else wait_for_signal())
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()


def main(
    *,
    host: str,
    port: int,
    kafka: KafkaOptions,
    feed_config_path: str | None,
    policy: Policy,
    max_body_bytes: int,
    metrics_port: int | None,
    log_level: str,
    limits: ListenerLimits,
    tls: TlsFiles | None,
    token: str | None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """The ``carwatch fhir-gateway`` command; ``ListenerSetupError`` when it cannot start."""
    config = feed_config(feed_config_path, FhirConfig)
    publisher, metrics = prepare_listener(FHIR_GATEWAY, kafka, metrics_port, log_level, ready)
    serve(
        run(
            host=host,
            port=port,
            publisher=publisher,
            config=config,
            policy=policy,
            metrics=metrics,
            max_body_bytes=max_body_bytes,
            limits=limits,
            tls=tls,
            token=token,
            ready=ready,
        ),
        host,
        port,
    )
