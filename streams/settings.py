"""Worker, feed and tail settings: ``CARWATCH_*`` environment variables (pydantic-settings).

Every process of the pipeline reads the same names, so one environment configures a deployment:

- Broker: ``CARWATCH_BROKER_URL`` (Faust style ``kafka://host:port``, several separated by ``,``
  or ``;``). Security is derived from what is set: a CA file (or client certificate) means TLS;
  a SASL mechanism means SASL (over TLS when a CA file is set). Secrets are ``SecretStr``: they
  never appear in a ``repr`` or a log line.
- Store: ``memory://`` (default: development and tests; the table is rebuilt from its changelog on
  every start) or, for production, ``rocksdb://`` with the rocksdict driver
  (``pip install 'carwatch[rocksdict]'``; the shell names the rocksdict driver, never the stale
  faust-streaming-rocksdb): state under ``CARWATCH_DATA_DIR``, so a restart reads only the
  changelog tail. ``rocksdict://`` is not a store URL faust-streaming accepts.
- ``group_instance_id``: Kafka static group membership; a worker restarted under the same id
  resumes its partitions at once instead of after the session timeout. One id per worker.
- Every listener binds to 127.0.0.1 unless configured: the Faust web server (``web_host``,
  ``web_port``) and the Prometheus endpoint (``metrics_host``, ``metrics_port``).
- ``broker_session_timeout_seconds``: how long the group coordinator waits for a silent member
  before rebalancing; short (6–10 s) in tests so a fresh group starts quickly.
"""

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.core.policy import DEFAULT_POLICY, Policy

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """Configuration of one CAR-T Watch process (all fields from ``CARWATCH_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="CARWATCH_", extra="ignore", frozen=True)

    app_id: str = Field(default="carwatch", min_length=1)
    broker_url: str = "kafka://127.0.0.1:9092"

    # TLS / SASL (see module docstring for how the protocol is chosen)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    store: Literal["memory://", "rocksdb://"] = "memory://"
    data_dir: Path = Path("var/worker")
    #: Kafka ``group.instance.id`` of this worker (static membership); unique per worker.
    group_instance_id: str | None = Field(default=None, min_length=1)
    #: Decoded patient states kept in memory per worker (about 40 KB each after a year).
    state_cache_size: int = Field(default=10_000, ge=1)

    labs_topic: str = "carwatch.labs"
    clinical_topic: str = "carwatch.clinical"
    alerts_topic: str = "carwatch.alerts"
    deadletter_topic: str = "carwatch.deadletter"

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)

    policy_file: Path | None = None

    #: Seconds between ``tick`` runs over this worker's patients (monitoring gaps).
    tick_interval_seconds: float = Field(default=60.0, gt=0)
    #: Most records in one processing batch, and the longest wait to fill one.
    batch_size: int = Field(default=1000, ge=1)
    batch_timeout_seconds: float = Field(default=0.05, gt=0)
    #: Deliver each fetched run of records of one partition as one stream event (see
    #: ``streams.shell.chunking.ChunkingConsumer``); ``false`` falls back to Faust's per-message path.
    chunked_delivery: bool = True
    broker_session_timeout_seconds: float = Field(default=30.0, gt=0)
    broker_heartbeat_interval_seconds: float = Field(default=3.0, gt=0)
    #: How often processed offsets are committed (Faust's ``broker_commit_interval``).
    commit_interval_seconds: float = Field(default=2.8, gt=0)
    #: Create missing topics (with ``partitions``) before the worker starts.
    create_topics: bool = True
    #: Python's GIL switch interval in the worker. Faust's Kafka client runs in its own thread;
    #: at the default 5 ms the two threads hand the GIL back and forth and a busy worker loses
    #: half its throughput. Only matters while the worker is saturated.
    gil_switch_interval_seconds: float = Field(default=0.05, gt=0, le=1)

    @field_validator("broker_url")
    @classmethod
    def _has_host(cls, value: str) -> str:
        bootstrap_servers(value)
        return value

    # -- derived values ---------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return bootstrap_servers(self.broker_url)

    @property
    def security_protocol(self) -> str:
        tls = self.ssl_cafile is not None or self.ssl_certfile is not None
        if self.sasl_mechanism is not None:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"

    @property
    def topics(self) -> tuple[str, str, str, str]:
        return (self.labs_topic, self.clinical_topic, self.alerts_topic, self.deadletter_topic)

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
