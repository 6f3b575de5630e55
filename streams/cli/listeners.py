"""``carwatch mllp`` and ``carwatch fhir-gateway``: the hospital feed listeners (docs/feeds.md)."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from streams.cli.common import (
    UsageFailure,
    load_policy,
    log_level_option,
    metrics_port_option,
    policy_option,
)

if TYPE_CHECKING:
    pass

_BROKER_HELP = "Kafka URL (default: $CARWATCH_BROKER_URL, else kafka://127.0.0.1:9092)."
_TIMEOUT_HELP = "Seconds to wait for Kafka's acknowledgement before answering 'retry'."
_FEED_HELP = "TOML file with the feed's settings (Hl7Config / FhirConfig fields)."


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
            "--publish-timeout", type=click.FloatRange(min=0.1), default=10.0, help=_TIMEOUT_HELP
        ),
        click.option("--feed-config", "feed_config_path", help=_FEED_HELP),
        policy_option(),
        metrics_port_option(),
        log_level_option(),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_listener(
    name: str, run: Callable[..., None], policy_path: str | None, **options: Any
) -> None:
    from streams.listeners.publisher import ListenerSetupError

    try:
        run(
            policy=load_policy(policy_path),
            ready=lambda line: click.echo(f"carwatch {name}: {line}", err=True),
            **options,
        )
    except ListenerSetupError as exc:
        raise UsageFailure(str(exc)) from exc


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

    _run_listener("mllp", listener.main, policy_path, **options)


@click.command("fhir-gateway")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=8 * 1024 * 1024)
@_listener_options
def fhir_gateway(policy_path: str | None, **options: Any) -> None:
    """Receive FHIR R4 Observations and Bundles over HTTP; 2xx only once Kafka has them."""
    from streams.listeners import fhir_gateway as gateway

    _run_listener("fhir-gateway", gateway.main, policy_path, **options)
