"""``carwatch worker``: the Faust worker (``streams.shell``)."""

import sys

import click

from streams.cli.common import (
    UsageFailure,
    log_level_option,
    metrics_port_option,
    settings_from_env,
)
from streams.core.policy import PolicyError


@click.command()
@log_level_option("loglevel")
@metrics_port_option()
def worker(loglevel: str, metrics_port: int | None) -> None:
    """Run the Faust worker: monitor agent, tick timer and /metrics (settings: CARWATCH_*)."""
    from streams.pipeline.topics import TopicError, ensure_topics

    settings = settings_from_env(metrics_port=metrics_port)
    try:
        settings.load_policy()
    except PolicyError as exc:
        raise UsageFailure(str(exc)) from exc
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(
            f"CARWATCH_DATA_DIR {str(settings.data_dir)!r} cannot be created: "
            f"{exc.strerror or type(exc).__name__}"
        ) from exc
    if settings.create_topics:
        try:
            ensure_topics(settings)
        except TopicError as exc:
            raise click.ClickException(str(exc)) from exc
    sys.setswitchinterval(settings.gil_switch_interval_seconds)

    from streams.shell.app import run_worker

    run_worker(settings, loglevel)
