"""What every command shares: one-line usage errors (exit 2), time and policy arguments,
settings from ``CARWATCH_*``, and the options several commands have -- defined once here, so each
is spelt the same everywhere (tests/unit/cli/test_cli_options.py checks it)."""

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from streams.core.policy import DEFAULT_POLICY, Policy, PolicyError

if TYPE_CHECKING:
    from streams.settings import Settings

EXIT_USAGE = 2


class UsageFailure(click.ClickException):
    exit_code = EXIT_USAGE


def parse_aware_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageFailure(f"--now {text!r} is not an ISO 8601 date-time") from exc
    if moment.tzinfo is None:
        raise UsageFailure(f"--now {text!r} has no time zone (naive_datetime); add Z or +hh:mm")
    return moment


def load_policy(path: str | None) -> Policy:
    if path is None:
        return DEFAULT_POLICY
    try:
        return Policy.from_toml(Path(path))
    except PolicyError as exc:
        raise UsageFailure(str(exc)) from exc


LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"])
#: Old spellings still accepted on the command line (rewritten, with a warning, by ``main``).
DEPRECATED_OPTIONS = {"--loglevel": "--log-level"}

F = TypeVar("F", bound=Callable[..., Any])


def log_level_option(dest: str = "log_level") -> Callable[[F], F]:
    return click.option(
        "--log-level",
        dest,
        type=LOG_LEVELS,
        default="info",
        show_default=True,
        help="Least severe log level written to stderr (patient data is redacted).",
    )


def policy_option() -> Callable[[F], F]:
    return click.option(
        "--policy",
        "policy_path",
        help="Policy TOML file: thresholds and plausibility limits (default: the built-in ones).",
    )


def metrics_port_option(dest: str = "metrics_port") -> Callable[[F], F]:
    return click.option(
        "--metrics-port",
        dest,
        type=click.IntRange(0, 65535),
        help="Port of /metrics (default: $CARWATCH_METRICS_PORT, else this command's own, "
        "docs/settings.md; 0: any free port) on $CARWATCH_METRICS_HOST (127.0.0.1).",
    )


def settings_from_env(**overrides: Any) -> "Settings":
    """``CARWATCH_*`` settings; command-line ``overrides`` that were given (not None) win."""
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        return Settings(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageFailure(f"CARWATCH_{where.upper()}: {first['msg']}") from exc
