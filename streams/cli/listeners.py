"""``carwatch mllp`` and ``carwatch fhir-gateway``: the hospital feed listeners (docs/feeds.md)."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from streams.cli.common import (
    UsageFailure,
    feed_config_option,
    load_policy,
    log_level_option,
    metrics_port_option,
    policy_option,
)

if TYPE_CHECKING:
    pass

#: One type instance for every PEM option (click compares option types by identity).
PEM_FILE = click.Path(dir_okay=False)
_BROKER_HELP = "Kafka URL (default: $CARWATCH_BROKER_URL, else kafka://127.0.0.1:9092)."
_TIMEOUT_HELP = "Seconds to wait for Kafka's acknowledgement before answering 'retry'."


def _listener_options(command: Callable[..., None]) -> Callable[..., None]:
    """Options every feed listener has: Kafka, topics, feed settings, policy, metrics, logs."""
    options = [
        click.option("--broker", "broker_url", help=_BROKER_HELP),
        click.option("--labs-topic", help="Default: $CARWATCH_LABS_TOPIC, else carwatch.labs."),
        click.option(
            "--deadletter-topic",
            help="Default: $CARWATCH_DEADLETTER_TOPIC, else carwatch.deadletter.",
        ),
        click.option(
            "--inbound-topic",
            help="The message store. Default: $CARWATCH_INBOUND_TOPIC, else carwatch.inbound.",
        ),
        click.option(
            "--publish-timeout", type=click.FloatRange(min=0.1), default=10.0, help=_TIMEOUT_HELP
        ),
        feed_config_option(),
        policy_option(),
        metrics_port_option(),
        log_level_option(),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Open connections at most; more are refused.",
        ),
        click.option(
            "--read-timeout",
            type=click.FloatRange(min=0.1),
            default=30.0,
            show_default=True,
            help="Seconds a message or body that started may take to arrive.",
        ),
        click.option(
            "--connection-idle-timeout",
            type=click.FloatRange(min=0.1),
            help="Seconds without a byte before a connection is closed "
            "(default: 600 MLLP, 60 FHIR).",
        ),
        click.option("--parse-workers", type=click.IntRange(min=1), default=2, show_default=True),
        click.option(
            "--parse-mode",
            type=click.Choice(["process", "thread"]),
            default="process",
            show_default=True,
            help="Parse in worker processes (keeps the event loop's core) or threads.",
        ),
        click.option(
            "--parse-timeout",
            type=click.FloatRange(min=0.1),
            default=10.0,
            show_default=True,
            help="Seconds one message may take to parse before it is rejected.",
        ),
        click.option("--tls-cert", type=PEM_FILE, help="Server certificate (PEM)."),
        click.option("--tls-key", type=PEM_FILE, help="Its private key (PEM)."),
        click.option(
            "--tls-client-ca",
            type=PEM_FILE,
            help="CA of client certificates: mutual TLS (senders must present one).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_listener(
    name: str,
    run: Callable[..., None],
    policy_path: str | None,
    default_idle: float,
    **options: Any,
) -> None:
    from streams.listeners.publisher import KafkaOptions, ListenerSetupError

    limits, tls = _limits_and_tls(options, default_idle)
    kafka = KafkaOptions(
        broker_url=options.pop("broker_url"),
        labs_topic=options.pop("labs_topic"),
        deadletter_topic=options.pop("deadletter_topic"),
        inbound_topic=options.pop("inbound_topic"),
        publish_timeout=options.pop("publish_timeout"),
    )
    try:
        run(
            policy=load_policy(policy_path),
            ready=lambda line: click.echo(f"carwatch {name}: {line}", err=True),
            limits=limits,
            tls=tls,
            kafka=kafka,
            **options,
        )
    except ListenerSetupError as exc:
        raise UsageFailure(str(exc)) from exc


def _limits_and_tls(options: dict[str, Any], default_idle: float) -> tuple[Any, Any]:
    """Pop the limit and TLS options into ``ListenerLimits`` and ``TlsFiles``."""
    from pathlib import Path

    from streams.listeners.connections import ListenerLimits, TlsFiles

    idle = options.pop("connection_idle_timeout")
    limits = ListenerLimits(
        idle_timeout_s=idle if idle is not None else default_idle,
        max_connections=options.pop("max_connections"),
        read_timeout_s=options.pop("read_timeout"),
        parse_workers=options.pop("parse_workers"),
        parse_mode=options.pop("parse_mode"),
        parse_timeout_s=options.pop("parse_timeout"),
    )
    cert, key, client_ca = (options.pop(k) for k in ("tls_cert", "tls_key", "tls_client_ca"))
    if cert is None:
        if key is not None or client_ca is not None:
            raise UsageFailure("--tls-key and --tls-client-ca need --tls-cert")
        return limits, None
    tls = TlsFiles(Path(cert), Path(key) if key else None, Path(client_ca) if client_ca else None)
    try:
        tls.server_context()
    except (OSError, ValueError) as exc:
        raise UsageFailure(f"cannot use the TLS certificate {cert}: {exc}") from exc
    return limits, tls


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=2575, show_default=True)
@click.option("--max-frame-bytes", type=click.IntRange(min=1024), default=1024 * 1024)
@click.option(
    "--broker-down",
    type=click.Choice(["ar", "close"]),
    default="ar",
    show_default=True,
    help="While Kafka cannot confirm: answer AR (retry), or close without an ACK.",
)
@_listener_options
def mllp(policy_path: str | None, **options: Any) -> None:
    """Receive HL7 v2 ORU^R01 over MLLP; ACK AA only once Kafka has the results."""
    from streams.listeners import mllp as listener

    _run_listener(
        "mllp",
        listener.main,
        policy_path,
        listener.DEFAULT_IDLE_TIMEOUT_S,
        **options,
    )


@click.command("fhir-gateway")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=8 * 1024 * 1024)
@click.option(
    "--token-env",
    help="Environment variable holding the bearer token senders must present (never on the "
    "command line).",
)
@_listener_options
def fhir_gateway(policy_path: str | None, token_env: str | None, **options: Any) -> None:
    """Receive FHIR R4 Observations and Bundles (JSON or XML) over HTTP(S); 2xx only once Kafka
    has them."""
    import os

    from streams.listeners import fhir_gateway as gateway

    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise UsageFailure(f"--token-env {token_env}: the variable is not set")
    _run_listener(
        "fhir-gateway",
        gateway.main,
        policy_path,
        gateway.DEFAULT_IDLE_TIMEOUT_S,
        token=token,
        **options,
    )
