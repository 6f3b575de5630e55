"""Everything a request handler of ``carwatch web`` needs, built once per process."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import jinja2
from aiohttp import web

from streams.core.policy import Policy
from streams.settings import Settings
from streams.web import format as fmt
from streams.web.accesslog import AccessLog
from streams.web.acks import OutboxPublisher
from streams.web.auth import SessionInfo, Sessions, Throttle, User
from streams.web.config import UiSettings
from streams.web.db import Database
from streams.web.metrics import WebMetrics
from streams.web.queries import PatientKeys


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class WebContext:
    settings: Settings
    ui: UiSettings
    db: Database
    policy: Policy
    metrics: WebMetrics
    users: dict[str, User]
    access: AccessLog
    keys: PatientKeys
    publisher: OutboxPublisher
    clock: Callable[[], datetime] = utc_now
    sessions: Sessions = field(init=False)
    throttle: Throttle = field(init=False)
    templates: jinja2.Environment = field(init=False)
    #: set when an acknowledgement waits in the outbox (wakes the publisher at once)
    nudge: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self.sessions = Sessions(
            self.db,
            idle=timedelta(minutes=self.ui.session_idle_minutes),
            lifetime=timedelta(hours=self.ui.session_max_hours),
        )
        self.throttle = Throttle(self.ui.login_max_failures, self.ui.login_lockout_minutes * 60)
        self.templates = templates(self.policy)


def templates(policy: Policy) -> jinja2.Environment:
    """Autoescaped HTML templates with the pages' filters (times in the policy's time zone)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("streams.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    tz = policy.tz
    env.filters["local"] = lambda moment: fmt.local_time(moment, tz)
    env.filters["age"] = fmt.age
    env.filters["number"] = fmt.number
    env.filters["unit"] = fmt.unit_label
    env.filters["analyte"] = lambda name: fmt.ANALYTE_LABELS.get(name, name)
    env.globals["result_text"] = fmt.result_text
    env.globals["timezone"] = policy.timezone
    return env


#: Where the application keeps its ``WebContext``.
CTX = web.AppKey("ctx", WebContext)
#: The signed-in user of a request (set by the authentication middleware).
SESSION = web.RequestKey("session", SessionInfo)
