"""``carwatch worker``: the Faust worker (streams/shell/)."""

import os
import sys
from typing import TYPE_CHECKING

import click

from streams.cli.common import (
    UsageFailure,
    log_level_option,
    metrics_port_option,
    settings_from_env,
)
from streams.core.policy import PolicyError

if TYPE_CHECKING:
    pass


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
    if settings.create_topics:
        try:
            ensure_topics(settings)
        except TopicError as exc:
            raise click.ClickException(str(exc)) from exc
    sys.setswitchinterval(settings.gil_switch_interval_seconds)

    import faust

    if metrics_port is not None:  # streams.shell.app reads its settings from the environment
        os.environ["CARWATCH_METRICS_PORT"] = str(metrics_port)
    from streams.shell.app import app

    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
