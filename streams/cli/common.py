"""What every command shares: one-line usage errors (exit 2), time and policy arguments,
settings from ``CARWATCH_*``, and the options several commands have -- defined once here, so each
is spelt the same everywhere (tests/unit/cli/test_cli_options.py checks it)."""

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from streams.core.policy import DEFAULT_POLICY, Policy, PolicyError
from streams.ingest.config import feed_config_from, load_feed_toml
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from streams.settings import Settings

EXIT_USAGE = 2


class UsageFailure(click.ClickException):
    exit_code = EXIT_USAGE


def parse_aware_datetime(text: str, option: str = "--now") -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageFailure(f"{option} {text!r} is not an ISO 8601 date-time") from exc
    if moment.tzinfo is None:
        raise UsageFailure(f"{option} {text!r} has no time zone (naive_datetime); add Z or +hh:mm")
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
SettingsT = TypeVar("SettingsT", bound="BaseSettings")


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


def feed_config_option() -> Callable[[F], F]:
    return click.option(
        "--feed-config",
        "feed_config_path",
        help="The feed's TOML settings (Hl7Config / FhirConfig fields: local codes, zone, ...), "
        "one file for the listener, replay and reprocessing (docs/feeds.md).",
    )


def since_option(required: bool = False) -> Callable[[F], F]:
    return click.option(
        "--since",
        required=required,
        help="Start at records that arrived at or after this time (ISO 8601 with zone).",
    )


def settings_from_env(**overrides: Any) -> "Settings":
    """``CARWATCH_*`` settings; command-line ``overrides`` that were given (not None) win."""
    from streams.settings import Settings

    return settings_of(Settings, **overrides)


def settings_of(model: type[SettingsT], **overrides: Any) -> SettingsT:
    """One settings model from the environment and the given ``overrides``; a bad value is a
    one-line usage error naming its variable."""
    from pydantic import ValidationError

    try:
        return model(**{name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        prefix = str(model.model_config.get("env_prefix", ""))
        raise UsageFailure(f"{prefix}{where.upper()}: {first['msg']}") from exc


def feed_configs(path: str | None, timezone: str | None) -> tuple[Hl7Config, FhirConfig]:
    """Both formats' settings from one feed TOML (the listener's file), ``--feed-timezone`` on top."""
    try:
        data = load_feed_toml(path)
        if timezone is not None:
            data = {**data, "default_timezone": timezone}
        where = path or "--feed-timezone"
        return feed_config_from(data, Hl7Config, where), feed_config_from(data, FhirConfig, where)
    except ValueError as exc:
        raise UsageFailure(str(exc)) from exc
