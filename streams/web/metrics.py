"""Metrics of ``carwatch web`` (docs/web.md), on their own registry and port.

The page port needs a login; Prometheus scrapes these on ``CARWATCH_WEB_METRICS_PORT`` (9468),
bound to 127.0.0.1 unless configured. Labels are bounded enums -- topic, outcome, route name,
HTTP status -- never a patient id, user name or URL path.
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.metrics import (
    ALLOWED_LABEL_VALUES,
    LOGIN_OUTCOMES,
    PUBLISH_OUTCOMES,
    READMODEL_OUTCOMES,
)
from streams.web.readmodel import Source

#: Route names (``name=`` of every route in ``streams.web.app``): the ``route`` label.
ROUTES = (
    "healthz",
    "login",
    "logout",
    "inbox",
    "patient",
    "alert",
    "ack",
    "api_inbox",
    "api_alert",
    "static",
    "unknown",
)
#: Label values of the web's series: the shared vocabularies (streams.metrics) plus routes.
ALLOWED_WEB_LABEL_VALUES: dict[str, frozenset[str]] = {
    **ALLOWED_LABEL_VALUES,
    "topic": frozenset(s.value for s in Source),
    "route": frozenset(ROUTES),
}


@dataclass
class WebMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.lag = Gauge(
            "carwatch_readmodel_lag_messages",
            "Messages on the topic not yet in the read model (sum over partitions).",
            ["topic"],
            registry=r,
        )
        self.events = Counter(
            "carwatch_readmodel_events",
            "Records read into the read model by topic and outcome (applied, duplicate, "
            "rejected, not_enrolled, unmapped).",
            ["topic", "outcome"],
            registry=r,
        )
        self.caught_up = Gauge(
            "carwatch_readmodel_caught_up_timestamp_seconds",
            "Unix time at which every followed partition was last read to its end.",
            registry=r,
        )
        self.broker_reachable = Gauge(
            "carwatch_readmodel_broker_reachable",
            "1 while the ingester reaches the broker, else 0.",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "carwatch_acks_outbox_pending",
            "Acknowledgements kept in the database, not yet confirmed on the acks topic.",
            registry=r,
        )
        self.ack_publish = Counter(
            "carwatch_acks_publish_attempts",
            "Attempts to publish an acknowledgement from the outbox, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.requests = Counter(
            "carwatch_web_requests",
            "HTTP requests by route name and status code.",
            ["route", "status"],
            registry=r,
        )
        self.logins = Counter(
            "carwatch_web_logins",
            "Login attempts by outcome (success, failure, throttled).",
            ["outcome"],
            registry=r,
        )
        # bounded label values exist from the start at 0: an increase() or a panel sees the
        # first event, and a scrape shows every series a rule may select
        for source in Source:
            for outcome in READMODEL_OUTCOMES:
                self.events.labels(source.value, outcome)
        for outcome in LOGIN_OUTCOMES:
            self.logins.labels(outcome)
        for outcome in PUBLISH_OUTCOMES:
            self.ack_publish.labels(outcome)
