"""The Faust application, built by ``create_app(settings)``; importing this module builds nothing.

``carwatch worker`` runs ``run_worker(settings)``; ``faust -A streams.shell.app worker`` finds
``app`` here, built from ``CARWATCH_*`` on first access (a module ``__getattr__``). Choices, and
why (docs/architecture.md "Kafka and Faust facts", docs/capacity.md):

- ``processing_guarantee="at_least_once"``: alert ids are deterministic, so a record processed
  twice re-sends events that subscribers drop by ``event_id``; Faust's exactly-once mode has open
  duplicate and crash reports.
- Static group membership (``CARWATCH_GROUP_INSTANCE_ID``, Kafka's ``group.instance.id``): a
  worker restarted under the same id gets its partitions back at once instead of waiting for the
  session timeout to expire the dead member (10-30 s). Each worker of a group needs its own id
  (two workers under one id fence each other); unset, membership is dynamic. Faust's assignor
  asserts that a member's URL is the one it joined with, and a static member that rejoins gets
  its previous assignment back: the URL is therefore derived from the id alone, never from a
  port that may change between restarts (the worker would otherwise stop consuming, silently).
- ``web_tables_enabled=False``: Faust's ``/table`` endpoint would serve patient state over HTTP.
  The web server binds to ``CARWATCH_WEB_HOST`` (127.0.0.1) explicitly: ``faust worker`` would
  otherwise listen on 0.0.0.0.
- Stores: ``memory://`` (tests; rebuilt from the changelog on every start) or ``rocksdb://`` with
  the rocksdict driver (production; state under ``CARWATCH_DATA_DIR``, a restart reads only the
  changelog's tail). ``rocksdict://`` is no store URL faust-streaming accepts.
- Chunked delivery: ``streams.shell.chunking``.
- ``producer_max_batch_size`` 512 KiB (Faust's default 16 KiB): every batch writes its patients'
  states to the changelog, a few KB each with long histories; in 16 KiB batches the alerts queued
  behind them, and produce->alert latency at 1,000 results/s was 1 s at the median instead of
  16 ms (docs/capacity.md).
"""

from typing import Any

import faust

from streams.settings import Settings
from streams.shell import agents
from streams.shell.chunking import ChunkingTransport
from streams.shell.topics import PatientTable, Topics, declare_table, declare_topics


class CarwatchApp(faust.App):
    """``faust.App`` with the chunking consumer for ``chunked_topics``, and the shell's parts."""

    chunked_topics: frozenset[str] = frozenset()
    chunk_size: int = 1000
    shell_topics: Topics
    patient_state: PatientTable
    pipeline: agents.Pipeline

    def _new_transport(self) -> Any:
        if not self.chunked_topics:
            return super()._new_transport()
        return ChunkingTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> CarwatchApp:
    """A new app with its topics, table, agent, timer and hooks (raises ``PolicyError``)."""
    app = CarwatchApp(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=credentials(settings),
        broker_session_timeout=settings.broker_session_timeout_seconds,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        consumer_group_instance_id=settings.group_instance_id,
        canonical_url=canonical_url(settings),
        store=settings.store,
        datadir=str(settings.data_dir),
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # False where an operator owns the topics: Faust would ask to create its changelog and
        # leader topics at every start, which a user without Create is refused even when they exist.
        topic_allow_declare=settings.create_topics,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_tables_enabled=False,
        cython_optimizations=True,
        # Chunks are large: a short queue keeps memory bounded while the agent catches up.
        stream_buffer_maxsize=64 if settings.chunked_delivery else 4096,
        table_standby_replicas=0,
        producer_max_batch_size=512 * 1024,
        Table=PatientTable,
    )
    if settings.chunked_delivery:
        app.chunked_topics = frozenset((settings.labs_topic, settings.clinical_topic))
        app.chunk_size = settings.batch_size
    app.shell_topics = declare_topics(app, settings)
    app.patient_state = declare_table(app, settings)
    app.pipeline = agents.register(app, settings, app.shell_topics, app.patient_state)
    return app


def canonical_url(settings: Settings) -> str:
    """The URL Faust announces to the group (module docstring: static membership)."""
    if settings.group_instance_id is not None:
        return f"http://{settings.group_instance_id}.carwatch.invalid"
    return f"http://{settings.web_host}:{settings.web_port}"


def credentials(settings: Settings) -> Any:
    """``broker_credentials`` for ``faust.App`` (None for plaintext)."""
    context = settings.ssl_context()
    if settings.sasl_mechanism is not None:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def run_worker(settings: Settings, loglevel: str) -> None:
    """Run the worker until it is stopped (``faust.Worker`` handles the signals)."""
    faust.Worker(create_app(settings), loglevel=loglevel).execute_from_commandline()


_built: dict[str, CarwatchApp] = {}


def __getattr__(name: str) -> Any:
    """``app`` for ``faust -A streams.shell.app``: built from ``CARWATCH_*`` on first access."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if "app" not in _built:
        _built["app"] = create_app(Settings())
    return _built["app"]
