"""Prometheus metrics, one set per process (docs/deploy.md "Metrics").

Every long-running process serves only its own series from its own ``CollectorRegistry``, under
its own Prometheus job (``PROCESSES``): the worker ``PipelineMetrics``, the feed listeners
``ListenerMetrics``, the webhook deliverer ``DeliveryMetrics`` (the clinician web has its own set
in ``streams.web``). The first two share ``IngestMetrics``: results, rejects and dead letters
are counted where they are decided. An alert rule that selects a metric under a job whose process
does not export it can never fire; tests/ops/test_exported_series.py starts the real processes and
fails on such a rule or dashboard panel.

Names follow Prometheus conventions: ``carwatch_`` prefix, ``_total`` counters, seconds. Every
label is a bounded enum (analyte, outcome, reason, rule, severity, action, topic, channel,
listener, code, result): **never a patient id, accession or any other PHI**.
``ALLOWED_LABEL_VALUES`` lists them; tests scrape the processes and check every value against it.
"""

import errno
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from schemas.vocab import AlertAction, Analyte, Outcome, RejectReason, RuleName, Severity

#: Topics a metric may name (input and output topics of the pipeline, and replay/feeds).
TOPICS = (
    "carwatch.labs",
    "carwatch.clinical",
    "carwatch.alerts",
    "carwatch.deadletter",
    "carwatch.inbound",
    "carwatch.acks",
    "mllp",
    "fhir",
    "replay",
)
#: Analyte label value for a record whose analyte is not (yet) known.
UNKNOWN_ANALYTE = "unknown"
#: Label value for records that are not lab results (infusion, clinical events).
CLINICAL = "clinical"
CHANNELS = ("webhook", "kafka")
#: Final outcome per event and receiver (``retried``: one more attempt was scheduled).
DELIVERY_OUTCOMES = ("delivered", "failed", "retried")
#: Result of one HTTP attempt: 2xx, a status worth retrying (408, 425, 429, 5xx), any other
#: status (the receiver refused the request), or no response (timeout, connection error).
ATTEMPT_RESULTS = ("delivered", "retryable", "rejected", "no_response")
LISTENERS = ("mllp", "fhir")
#: HL7 acknowledgement codes (MLLP) and the HTTP statuses the FHIR gateway answers.
LISTENER_CODES = (
    "AA",
    "AE",
    "AR",
    *("200", "201", "400", "401", "403", "404", "405", "406", "413", "415", "422", "429", "503"),
)
CONNECTION_OUTCOMES = ("accepted", "refused", "timeout", "tls_error")
#: ``carwatch web`` (streams/web/metrics.py): what became of a record read into the read model,
#: of a login attempt, of an attempt to publish an acknowledgement.
READMODEL_OUTCOMES = ("applied", "duplicate", "rejected", "not_enrolled", "unmapped")
LOGIN_OUTCOMES = ("success", "failure", "throttled")
PUBLISH_OUTCOMES = ("published", "failed")
#: Seconds buckets of ``carwatch_listener_parse_seconds`` (a message parses in ms; 10 s caps it).
PARSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    14400,
    86400,
    604800,
)

ALLOWED_LABEL_VALUES: dict[str, frozenset[str]] = {
    "analyte": frozenset([*(a.value for a in Analyte), UNKNOWN_ANALYTE, CLINICAL]),
    "outcome": frozenset(
        [
            *(o.value for o in Outcome),
            *DELIVERY_OUTCOMES,
            *CONNECTION_OUTCOMES,
            *READMODEL_OUTCOMES,
            *LOGIN_OUTCOMES,
            *PUBLISH_OUTCOMES,
        ]
    ),
    "reason": frozenset(r.value for r in RejectReason),
    "rule": frozenset(r.value for r in RuleName),
    "severity": frozenset(s.value for s in Severity),
    "action": frozenset(a.value for a in AlertAction),
    "topic": frozenset(TOPICS),
    "channel": frozenset(CHANNELS),
    "result": frozenset(ATTEMPT_RESULTS),
    "listener": frozenset(LISTENERS),
    "code": frozenset(LISTENER_CODES),
    #: the garbage collector's generations (prometheus-client's ``GCCollector``, on the worker)
    "generation": frozenset(("0", "1", "2")),
}


@dataclass
class IngestMetrics:
    """What every process that ingests or decides records counts (docs/runbook.md: jobs and ports)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.results = Counter(
            "carwatch_results",
            "Input records by analyte and outcome (accepted, rejected, unmapped, not_enrolled, "
            "duplicate, superseded, unknown_accession).",
            ["analyte", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "carwatch_rejected",
            "Rejected input records by machine-readable reason.",
            ["reason"],
            registry=r,
        )
        self.deadletters = Counter(
            "carwatch_deadletter_messages",
            "Messages written to the dead-letter topic, by the topic or adapter they came from.",
            ["topic"],
            registry=r,
        )


@dataclass
class PipelineMetrics(IngestMetrics):
    """The worker's metrics (job ``carwatch-worker``): consumption, decisions, state, lag."""

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.consumed = Counter(
            "carwatch_messages_consumed",
            "Messages consumed from Kafka topics.",
            ["topic"],
            registry=r,
        )
        self.alert_events = Counter(
            "carwatch_alert_events",
            "Clinical alert lifecycle events by rule, severity and action.",
            ["rule", "severity", "action"],
            registry=r,
        )
        self.active_alerts = Gauge(
            "carwatch_active_alerts",
            "Clinical alerts currently open (raised or updated, not resolved or retracted).",
            ["rule", "severity"],
            registry=r,
        )
        self.patients_monitored = Gauge(
            "carwatch_patients_monitored",
            "Enrolled patients whose state this process holds.",
            registry=r,
        )
        self.collected_to_alert = Histogram(
            "carwatch_collected_to_alert_seconds",
            "Specimen collection time to alert decision, by rule.",
            ["rule"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.received_to_alert = Histogram(
            "carwatch_received_to_alert_seconds",
            "Kafka record timestamp (arrival) to alert decision, by rule.",
            ["rule"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "carwatch_batch_processing_seconds",
            "Time to process one batch of records in the monitor agent.",
            registry=r,
        )
        self.last_result_timestamp = Gauge(
            "carwatch_last_result_ingested_timestamp_seconds",
            "Unix time at which the last lab result was ingested (feed-silence alerting).",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "carwatch_consumer_lag_messages",
            "Messages not yet consumed, by input topic (sum over this worker's partitions).",
            ["topic"],
            registry=r,
        )
        self.recovery_seconds = Gauge(
            "carwatch_table_recovery_seconds",
            "Duration of the last patient-state table recovery from its changelog.",
            registry=r,
        )
        self.recovery_in_progress = Gauge(
            "carwatch_table_recovery_in_progress",
            "1 while the patient-state table is recovering from its changelog, else 0.",
            registry=r,
        )


@dataclass
class ListenerMetrics(IngestMetrics):
    """The feed listeners' metrics (jobs ``carwatch-mllp``, ``carwatch-fhir-gateway``).

    The listener series carry ``listener`` (``mllp``/``fhir``); the codes are HL7 ACK codes for
    MLLP and HTTP statuses for FHIR (``LISTENER_CODES``). ``code_unit_mismatch`` counts CD19
    results accepted by their unit under the other CD19 analyte than their code names
    (streams.ingest.normalise), so the interface engineer sees it.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.registry
        self.code_unit_mismatch = Counter(
            "carwatch_code_unit_mismatch",
            "CD19 results accepted by their unit although their code names the other CD19 analyte.",
            ["analyte"],
            registry=r,
        )
        self.last_result_timestamp = Gauge(
            "carwatch_last_result_ingested_timestamp_seconds",
            "Unix time at which the last lab result was ingested (feed-silence alerting).",
            registry=r,
        )
        self.messages = Counter(
            "carwatch_listener_messages",
            "Messages answered, by acknowledgement code (AA/AE/AR) or HTTP status.",
            ["listener", "code"],
            registry=r,
        )
        self.connections_open = Gauge(
            "carwatch_listener_connections_open",
            "Client connections open now.",
            ["listener"],
            registry=r,
        )
        self.connections = Counter(
            "carwatch_listener_connections",
            "Client connections by outcome (accepted, refused at the cap, timeout, tls_error).",
            ["listener", "outcome"],
            registry=r,
        )
        self.received_bytes = Counter(
            "carwatch_listener_received_bytes",
            "Bytes received from clients.",
            ["listener"],
            registry=r,
        )
        self.parse_seconds = Histogram(
            "carwatch_listener_parse_seconds",
            "Time to parse and validate one inbound message.",
            ["listener"],
            buckets=PARSE_BUCKETS,
            registry=r,
        )
        self.publish_failures = Counter(
            "carwatch_listener_publish_failures",
            "Publishes the broker did not acknowledge in time (the sender was told to retry).",
            ["listener", "topic"],
            registry=r,
        )
        self.inbound = Counter(
            "carwatch_inbound_messages",
            "Raw inbound messages written to the inbound topic.",
            ["listener"],
            registry=r,
        )


@dataclass
class DeliveryMetrics:
    """The webhook deliverer's metrics (job ``carwatch-webhook``): attempts, outcomes, lag.

    Failures are ``carwatch_alert_deliveries_total{outcome="failed"}`` (an event a receiver did
    not get, after retries); ``carwatch_delivery_attempts_total`` breaks every HTTP attempt down
    by result, so the runbook can tell a receiver that refuses (wrong secret, URL) from one that
    is down.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.deliveries = Counter(
            "carwatch_alert_deliveries",
            "Alert deliveries to subscribers by channel and outcome (delivered, failed, retried).",
            ["channel", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "carwatch_delivery_attempts",
            "Delivery attempts by channel and result (delivered, retryable, rejected, "
            "no_response).",
            ["channel", "result"],
            registry=r,
        )
        self.lag = Gauge(
            "carwatch_delivery_lag_messages",
            "Alert events on the alerts topic this deliverer has not handled yet.",
            registry=r,
        )


@dataclass(frozen=True)
class Process:
    """A long-running process: its Prometheus job and default metrics port (docs/runbook.md: jobs and ports)."""

    command: str
    job: str
    metrics_port: int
    #: the variables that bind its metrics endpoint (host, port); deployments set them
    metrics_variables: tuple[str, str] = ("CARWATCH_METRICS_HOST", "CARWATCH_METRICS_PORT")


WORKER: Final = Process("carwatch worker", "carwatch-worker", 9464)
MLLP: Final = Process("carwatch mllp", "carwatch-mllp", 9465)
FHIR_GATEWAY: Final = Process("carwatch fhir-gateway", "carwatch-fhir-gateway", 9466)
WEBHOOK: Final = Process("carwatch alerts webhook", "carwatch-webhook", 9467)
#: The web's settings are its own (``CARWATCH_UI_*``, streams/web/config.py).
WEB: Final = Process(
    "carwatch web",
    "carwatch-web",
    9468,
    ("CARWATCH_UI_METRICS_HOST", "CARWATCH_UI_METRICS_PORT"),
)
PROCESSES: Final = (WORKER, MLLP, FHIR_GATEWAY, WEBHOOK, WEB)


class MetricsServerError(Exception):
    """The metrics endpoint cannot be served (address in use, not an address of this host)."""


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serve ``registry`` with the process collector on ``host:port``; the bound port (``port``
    0 picks a free one). Raises ``MetricsServerError`` with a one-line reason."""
    ProcessCollector(registry=registry)
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise MetricsServerError(f"cannot serve metrics on {host}:{port}: {reason}") from exc
    return int(server.server_port)
