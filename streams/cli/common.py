"""What every command shares: one-line usage errors (exit 2), time and policy arguments,
settings from ``CARWATCH_*``."""

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from streams.core.policy import DEFAULT_POLICY, Policy, PolicyError
from streams.ingest.config import feed_config_from, load_feed_toml
from streams.ingest.fhir.observation import FhirConfig
from streams.ingest.hl7.oru import Hl7Config

if TYPE_CHECKING:
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


def settings_from_env(**overrides: Any) -> "Settings":
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageFailure(f"CARWATCH_{where.upper()}: {first['msg']}") from exc


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
