"""Worker, feed and tail settings: ``CARWATCH_*`` environment variables (pydantic-settings).

Every process of the pipeline reads the same names, so one environment configures a deployment:

- Broker: ``CARWATCH_BROKER_URL`` (Faust style ``kafka://host:port``, several separated by ``,``
  or ``;``). ``CARWATCH_SECURITY_PROTOCOL`` chooses the protocol; unset, it is derived from what
  is set: a CA file (or client certificate) means TLS (``SSL``), a SASL mechanism means
  ``SASL_SSL`` — with the system's CA store when no CA file is given. SASL without TLS sends the
  password in clear and is only used when ``CARWATCH_SECURITY_PROTOCOL=SASL_PLAINTEXT`` says so
  (the first release silently fell back to it when the CA file was missing). Secrets are
  ``SecretStr``: they never appear in a ``repr`` or a log line.
- ``inbound_topic`` (``carwatch.inbound``): the listeners' message store, every raw HL7 message
  and FHIR body before it is answered; not compacted, kept ``inbound_retention_hours``.
- Store: ``memory://`` (default: development and tests; the table is rebuilt from its changelog on
  every start) or, for production, ``rocksdb://`` with the rocksdict driver
  (``pip install 'carwatch[rocksdict]'``; the shell names the rocksdict driver, never the stale
  faust-streaming-rocksdb): state under ``CARWATCH_DATA_DIR``, so a restart reads only the
  changelog tail. ``rocksdict://`` is not a store URL faust-streaming accepts.
- ``group_instance_id``: Kafka static group membership; a worker restarted under the same id
  resumes its partitions at once instead of after the session timeout. One id per worker.
- Every listener binds to 127.0.0.1 unless configured: the Faust web server (``web_host``,
  ``web_port``) and the Prometheus endpoint (``metrics_host``, ``metrics_port``). In a container
  set ``CARWATCH_METRICS_HOST=0.0.0.0`` so that probes and Prometheus reach the pod. Each process
  has its own default metrics port (``streams.metrics.PROCESSES``); ``CARWATCH_METRICS_PORT``
  overrides it for whichever process reads it.
- A ``CARWATCH_*`` variable that no settings model knows is rejected when a command starts
  (``check_environment``), with the closest valid name: a misspelt setting is never ignored.
  docs/settings.md lists every variable; it is generated from the models
  (``python -m streams.settings_reference``) and a test keeps it in sync.
- ``broker_session_timeout_seconds``: how long the group coordinator waits for a silent member
  before rebalancing; short (6–10 s) in tests so a fresh group starts quickly.
"""

import difflib
import importlib
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.core.policy import DEFAULT_POLICY, Policy

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class Settings(BaseSettings):
    """Configuration of one CAR-T Watch process (all fields from ``CARWATCH_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CARWATCH_", extra="ignore", frozen=True)

    #: Faust app id: the worker's consumer group and the prefix of its changelog topic.
    app_id: str = Field(default="carwatch", min_length=1)
    #: Kafka bootstrap servers, ``kafka://host:port`` (several separated by ``,`` or ``;``).
    broker_url: str = "kafka://127.0.0.1:9092"

    # TLS / SASL (see module docstring for how the protocol is chosen)
    #: Kafka security protocol; unset, derived: a SASL mechanism means SASL_SSL, a CA or client
    #: certificate SSL, else PLAINTEXT. SASL_PLAINTEXT (the password in clear) only when named.
    security_protocol: SecurityProtocol = "PLAINTEXT"
    #: CA bundle (PEM) that signed the brokers' certificates; setting it turns TLS on.
    ssl_cafile: Path | None = None
    #: Client certificate (PEM) for mutual TLS; turns TLS on.
    ssl_certfile: Path | None = None
    #: Private key (PEM) of the client certificate.
    ssl_keyfile: Path | None = None
    #: SASL mechanism; setting it turns SASL on, over TLS (SASL_SSL) unless
    #: CARWATCH_SECURITY_PROTOCOL says SASL_PLAINTEXT.
    sasl_mechanism: SaslMechanism | None = None
    #: SASL user name (e.g. the KafkaUser of deploy/k8s/users.yaml).
    sasl_username: str | None = None
    #: SASL password; never logged or shown.
    sasl_password: SecretStr | None = None

    #: Partitions of every topic the worker creates (the inputs and the table changelog).
    partitions: int = Field(default=8, ge=1)
    #: Replication factor of the topics the worker creates (3 on a production cluster).
    replication_factor: int = Field(default=1, ge=1)
    #: Table store: ``memory://`` (tests, development) or ``rocksdb://`` (production; the
    #: rocksdict driver, ``pip install 'carwatch[rocksdict]'``).
    store: Literal["memory://", "rocksdb://"] = "memory://"
    #: Faust's data directory (the rocksdict store lives under it); created with its parents.
    data_dir: Path = Path("var/worker")
    #: Kafka ``group.instance.id`` of this worker (static membership); unique per worker.
    group_instance_id: str | None = Field(default=None, min_length=1)
    #: Decoded patient states kept in memory per worker (about 40 KB each after a year).
    state_cache_size: int = Field(default=10_000, ge=1)

    #: Lab results (``LabResult``), keyed by patient id.
    labs_topic: str = "carwatch.labs"
    #: Infusions and clinical events, keyed by patient id.
    clinical_topic: str = "carwatch.clinical"
    #: Alert events for subscribers.
    alerts_topic: str = "carwatch.alerts"
    #: Rejected input with machine-readable reasons.
    deadletter_topic: str = "carwatch.deadletter"
    #: clinicians' acknowledgements of alerts (``carwatch web``, ``carwatch alerts ack``)
    acks_topic: str = "carwatch.acks"
    #: The listeners' message store: every raw HL7 message and FHIR body, before it is answered.
    inbound_topic: str = "carwatch.inbound"
    #: How long raw inbound messages are kept for ``carwatch reprocess`` (topic retention).
    inbound_retention_hours: float = Field(default=24 * 30, gt=0)

    #: Address the Prometheus endpoint binds to (``0.0.0.0`` inside a container or pod).
    metrics_host: str = "127.0.0.1"
    #: Port of the Prometheus endpoint; unset, each process uses its own (worker 9464, MLLP 9465,
    #: FHIR gateway 9466, webhook deliverer 9467). 0 picks a free port.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: Address of the worker's Faust web server (its liveness port, no patient data).
    web_host: str = "127.0.0.1"
    #: Port of the worker's Faust web server.
    web_port: int = Field(default=6066, ge=1, le=65535)

    #: TOML file of policy thresholds (``streams.core.policy.Policy``); unset: the defaults.
    policy_file: Path | None = None

    #: Seconds between ``tick`` runs over this worker's patients (monitoring gaps).
    tick_interval_seconds: float = Field(default=60.0, gt=0)
    #: Most records in one processing batch.
    batch_size: int = Field(default=1000, ge=1)
    #: Longest wait to fill a batch.
    batch_timeout_seconds: float = Field(default=0.05, gt=0)
    #: Deliver each fetched run of records of one partition as one stream event (see
    #: ``streams.shell.chunking.ChunkingConsumer``); ``false`` falls back to Faust's per-message path.
    chunked_delivery: bool = True
    #: How long the group coordinator waits for a silent member before rebalancing.
    broker_session_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Heartbeats to the group coordinator (well below the session timeout).
    broker_heartbeat_interval_seconds: float = Field(default=3.0, gt=0)
    #: How often processed offsets are committed (Faust's ``broker_commit_interval``).
    commit_interval_seconds: float = Field(default=2.8, gt=0)
    #: Create missing topics (with ``partitions``) before the worker starts, and let Faust create
    #: its changelog and leader topics; false where an operator owns them (Strimzi: no Create ACL).
    create_topics: bool = True
    #: Python's GIL switch interval in the worker. Faust's Kafka client runs in its own thread;
    #: at the default 5 ms the two threads hand the GIL back and forth and a busy worker loses
    #: half its throughput. Only matters while the worker is saturated.
    gil_switch_interval_seconds: float = Field(default=0.05, gt=0, le=1)
    #: Seconds between two freezes of the worker's live heap out of the garbage collector's
    #: scans (``streams.shell.heap``): a full scan of thousands of year-long patient states stops
    #: the worker for a second. Once an hour the heap is collected in full instead.
    gc_freeze_interval_seconds: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="before")
    @classmethod
    def _derive_protocol(cls, data: Any) -> Any:
        """The protocol from what is set, unless given: never SASL_PLAINTEXT by default."""
        if isinstance(data, dict) and not data.get("security_protocol"):
            tls = data.get("ssl_cafile") or data.get("ssl_certfile")
            derived = "SASL_SSL" if data.get("sasl_mechanism") else "SSL" if tls else "PLAINTEXT"
            data = {**data, "security_protocol": derived}
        return data

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> Self:
        sasl = "SASL" in self.security_protocol
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"{self.security_protocol} needs CARWATCH_SASL_MECHANISM")
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError("SASL needs CARWATCH_SASL_USERNAME and CARWATCH_SASL_PASSWORD")
        return self

    @field_validator("broker_url")
    @classmethod
    def _has_host(cls, value: str) -> str:
        bootstrap_servers(value)
        return value

    # -- derived values ---------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return bootstrap_servers(self.broker_url)

    def metrics_address(self, default_port: int, port: int | None = None) -> tuple[str, int]:
        """Where a process serves ``/metrics``: ``port`` (its command-line option), else
        ``CARWATCH_METRICS_PORT`` when it is set, else the process's own ``default_port``."""
        if port is None:
            port = self.metrics_port if "metrics_port" in self.model_fields_set else default_port
        return self.metrics_host, port

    @property
    def topics(self) -> tuple[str, str, str, str]:
        return (self.labs_topic, self.clinical_topic, self.alerts_topic, self.deadletter_topic)

    @property
    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Per-topic broker settings: the message store keeps raw messages up to the largest
        accepted FHIR body, for ``inbound_retention_hours``, never compacted; the alerts topic
        keeps every event (the record of what was announced, which ``carwatch web --rebuild``
        re-reads: a few events per patient and month), never compacted (keyed by patient)."""
        return {
            self.alerts_topic: {"cleanup.policy": "delete", "retention.ms": "-1"},
            self.inbound_topic: {
                "cleanup.policy": "delete",
                "retention.ms": str(int(self.inbound_retention_hours * 3600 * 1000)),
                "max.message.bytes": str(INBOUND_MAX_MESSAGE_BYTES),
            },
        }

    def ssl_context(self) -> ssl.SSLContext | None:
        if "SSL" not in self.security_protocol:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None
        )
        if self.ssl_certfile is not None:
            context.load_cert_chain(
                str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
            )
        return context

    def kafka_python_config(self) -> dict[str, Any]:
        """Connection keyword arguments for kafka-python clients (producer, consumer, admin)."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.ssl_cafile is not None:
            config["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile is not None:
            config["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile is not None:
            config["ssl_keyfile"] = str(self.ssl_keyfile)
        if self.sasl_mechanism is not None:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return config

    def aiokafka_config(self) -> dict[str, Any]:
        """Connection keyword arguments for aiokafka clients (benchmarks)."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            config["ssl_context"] = context
        if self.sasl_mechanism is not None:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return config

    def load_policy(self) -> Policy:
        """The policy file's thresholds, else the defaults. Raises ``PolicyError``."""
        if self.policy_file is None:
            return DEFAULT_POLICY
        return Policy.from_toml(self.policy_file)


#: Largest raw message the message store takes (a FHIR body up to 8 MiB, plus headers).
INBOUND_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def bootstrap_servers(url: str) -> str:
    """``kafka://h1:9092;kafka://h2:9092`` or ``h1:9092,h2`` → ``h1:9092,h2:9092``."""
    hosts = []
    for part in url.replace(";", ",").split(","):
        part = part.strip()
        if "://" in part:
            scheme, _, part = part.partition("://")
            if scheme.lower() != "kafka":
                raise ValueError(f"broker URL {url!r}: only kafka:// is supported")
        part = part.rstrip("/")
        if part:
            hosts.append(part if ":" in part else f"{part}:9092")
    if not hosts:
        raise ValueError(f"broker URL {url!r} names no host")
    return ",".join(hosts)


#: Every settings model that reads ``CARWATCH_*`` variables, as ``module:Class`` (imported on
#: demand). A test fails when a ``BaseSettings`` under ``streams`` is missing here.
SETTINGS_MODELS: Final = ("streams.settings:Settings", "streams.web.config:UiSettings")

#: ``CARWATCH_*`` variables read outside the settings models, and by what.
OTHER_VARIABLES: Final = {
    "CARWATCH_WEBHOOK_SECRET": (
        "HMAC-SHA256 signing secret of `carwatch alerts webhook` (the variable its "
        "`--secret-env` names by default); never given on the command line."
    ),
    "CARWATCH_KAFKA_PORT": "scripts/broker.sh: the local broker's client port (9092).",
    "CARWATCH_KAFKA_CONTROLLER_PORT": "scripts/broker.sh: the KRaft controller port (9093).",
    "CARWATCH_KAFKA_START_TIMEOUT": "scripts/broker.sh: seconds `up` waits for the broker (60).",
    "CARWATCH_KAFKA_STOP_TIMEOUT": "scripts/broker.sh: seconds `down` waits before SIGKILL (30).",
    "CARWATCH_STATE_DIR": "scripts/broker.sh: the local broker's state directory (var/kafka).",
    "CARWATCH_KAFKA_SASL_SSL_PORT": (
        "scripts/broker.sh: port of the opt-in TLS + SASL/SCRAM listener (off when unset)."
    ),
    "CARWATCH_KAFKA_SSL_KEYSTORE_PEM": (
        "scripts/broker.sh: the secure listener's key and certificate chain (one PEM file)."
    ),
    "CARWATCH_KAFKA_SCRAM_USER": "scripts/broker.sh: the SCRAM-SHA-256 user it creates.",
    "CARWATCH_KAFKA_SCRAM_PASSWORD": "scripts/broker.sh: that user's password.",
    "CARWATCH_TEST_KAFKA_PORT": "Tests: the port of the broker the test run starts (19092).",
}


class UnknownSetting(ValueError):
    """A ``CARWATCH_*`` variable that nothing reads (a typo, or a setting that was renamed)."""


def settings_models() -> list[type[BaseSettings]]:
    """The classes of ``SETTINGS_MODELS``."""
    models = []
    for path in SETTINGS_MODELS:
        module, _, name = path.partition(":")
        models.append(getattr(importlib.import_module(module), name))
    return models


def env_names(model: type[BaseSettings]) -> dict[str, str]:
    """Environment variable (upper case) → field name, for one settings model (a string
    ``validation_alias`` is the variable's whole name, as pydantic-settings reads it)."""
    prefix = str(model.model_config.get("env_prefix", ""))
    names = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        names[(alias if isinstance(alias, str) else f"{prefix}{name}").upper()] = name
    return names


def known_variables() -> frozenset[str]:
    names = set(OTHER_VARIABLES)
    for model in settings_models():
        names.update(env_names(model))
    return frozenset(names)


def check_environment(environ: Mapping[str, str], also: Iterable[str] = ()) -> None:
    """Raise ``UnknownSetting`` for the first ``CARWATCH_*`` variable no model or script reads,
    naming the closest valid one (variable names are case-insensitive, as pydantic reads them)."""
    known = known_variables() | {name.upper() for name in also}
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith("CARWATCH_") and upper not in known:
            suffixes = {k.removeprefix("CARWATCH_"): k for k in known}
            close = difflib.get_close_matches(upper.removeprefix("CARWATCH_"), suffixes, n=1)
            hint = (
                f"; did you mean {suffixes[close[0]]}?"
                if close
                else " (docs/settings.md lists the valid ones)"
            )
            raise UnknownSetting(f"unknown setting {name}{hint}")
