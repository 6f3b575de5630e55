"""What every command shares: one-line usage errors (exit 2), time and policy arguments,
settings from ``CARWATCH_*``."""

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def settings_from_env(**overrides: Any) -> "Settings":
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageFailure(f"CARWATCH_{where.upper()}: {first['msg']}") from exc
