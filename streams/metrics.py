"""Prometheus metrics of the pipeline (DESIGN.md "Metrics").

Names follow Prometheus conventions: ``carwatch_`` prefix, ``_total`` counters, seconds. Every
label is a bounded enum (analyte, outcome, reason, rule, severity, action, topic, channel,
partition): **never a patient id, accession or any other PHI**. ``ALLOWED_LABEL_VALUES`` lists
them; a test scrapes a worker and checks every label value against it.
"""

from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from schemas.vocab import AlertAction, Analyte, Outcome, RejectReason, RuleName, Severity

#: Topics a metric may name (input and output topics of the pipeline, and replay/feeds).
TOPICS = (
    "carwatch.labs",
    "carwatch.clinical",
    "carwatch.alerts",
    "carwatch.deadletter",
    "carwatch.inbound",
    "mllp",
    "fhir",
    "replay",
)
#: Analyte label value for a record whose analyte is not (yet) known.
UNKNOWN_ANALYTE = "unknown"
#: Label value for records that are not lab results (infusion, clinical events).
CLINICAL = "clinical"
CHANNELS = ("webhook", "kafka")
DELIVERY_OUTCOMES = ("delivered", "failed", "retried")

#: ``listener`` label values (CONTRACTS.md "Listeners").
LISTENERS = ("mllp", "fhir")
#: ``outcome`` of ``carwatch_listener_connections_total``.
CONNECTION_OUTCOMES = ("accepted", "refused", "timeout", "tls_error")
#: ``code`` of ``carwatch_listener_messages_total``: HL7 ACK codes and the gateway's HTTP statuses.
LISTENER_CODES = (
    *("AA", "AE", "AR"),
    *("200", "201", "400", "401", "403", "404", "405", "406", "413", "415", "422", "429", "503"),
)
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
    "outcome": frozenset([*(o.value for o in Outcome), *DELIVERY_OUTCOMES, *CONNECTION_OUTCOMES]),
    "reason": frozenset(r.value for r in RejectReason),
    "rule": frozenset(r.value for r in RuleName),
    "severity": frozenset(s.value for s in Severity),
    "action": frozenset(a.value for a in AlertAction),
    "topic": frozenset(TOPICS),
    "channel": frozenset(CHANNELS),
    "listener": frozenset(LISTENERS),
    "code": frozenset(LISTENER_CODES),
}


@dataclass
class IngestMetrics:
    """The series every process that ingests has (CONTRACTS.md: results, rejections, dead
    letters, last ingest), in ``registry`` (a fresh one per test)."""

    registry: CollectorRegistry = field(default=REGISTRY)

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
        self.last_result_timestamp = Gauge(
            "carwatch_last_result_ingested_timestamp_seconds",
            "Unix time at which the last lab result was ingested (feed-silence alerting).",
            registry=r,
        )


@dataclass
class PipelineMetrics(IngestMetrics):
    """All metrics of the worker process."""

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
        self.consumer_lag = Gauge(
            "carwatch_consumer_lag_messages",
            "Messages not yet consumed, by input topic (sum over this worker's partitions).",
            ["topic"],
            registry=r,
        )
        self.deliveries = Counter(
            "carwatch_alert_deliveries",
            "Alert deliveries to subscribers by channel and outcome (delivered, failed, retried).",
            ["channel", "outcome"],
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
    """The metrics of one listener process (``carwatch mllp``, ``carwatch fhir-gateway``), in its
    own registry: the shared ingest counters plus the listener series of CONTRACTS.md.

    ``code_unit_mismatch`` counts CD19 results accepted by their unit under the other CD19
    analyte than their code names (streams.ingest.normalise), so the interface engineer sees it.
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
        self.messages = Counter(
            "carwatch_listener_messages",
            "Messages answered, by listener and answer (HL7 ACK code or HTTP status).",
            ["listener", "code"],
            registry=r,
        )
        self.connections_open = Gauge(
            "carwatch_listener_connections_open",
            "Connections open now.",
            ["listener"],
            registry=r,
        )
        self.connections = Counter(
            "carwatch_listener_connections",
            "Connections by outcome (accepted, refused at the cap, timeout, tls_error).",
            ["listener", "outcome"],
            registry=r,
        )
        self.received_bytes = Counter(
            "carwatch_listener_received_bytes",
            "Bytes received from senders.",
            ["listener"],
            registry=r,
        )
        self.parse_seconds = Histogram(
            "carwatch_listener_parse_seconds",
            "Time to parse one message or body in the worker pool.",
            ["listener"],
            buckets=PARSE_BUCKETS,
            registry=r,
        )
        self.publish_failures = Counter(
            "carwatch_listener_publish_failures",
            "Publishes the broker did not acknowledge in time, by topic.",
            ["listener", "topic"],
            registry=r,
        )
        self.inbound = Counter(
            "carwatch_inbound_messages",
            "Raw inbound messages written to the message store (carwatch.inbound).",
            ["listener"],
            registry=r,
        )
