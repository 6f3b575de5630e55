"""The pages over a real read model (SQLite) and aiohttp's test server: access, CSRF, headers,
the inbox, acknowledgements and what an escalation does to them."""

import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from schemas.alert import AlertEvent
from schemas.vocab import AlertAction, Severity
from streams.core.policy import DEFAULT_POLICY
from streams.settings import Settings
from streams.web.accesslog import AccessLog
from streams.web.app import SECURE_HEADERS, create_app
from streams.web.auth import User, hash_password
from streams.web.config import UiSettings
from streams.web.context import WebContext
from streams.web.db import Database, OutboxRow
from streams.web.metrics import WebMetrics
from streams.web.queries import PatientKeys
from tests.unit.web.webtools import Feed, apply_all, story

PASSWORD = "correct horse battery staple"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class NoBroker:
    """Stands in for the outbox publisher: the broker is never reached in these tests."""

    def __init__(self) -> None:
        self.rounds = 0

    def publish_pending(self, now: datetime) -> int:
        self.rounds += 1
        return 0

    def close(self) -> None:
        return None


def make_context(db: Database, folder: Path) -> WebContext:
    with db.write() as session:
        keys = PatientKeys.load(session)
    return WebContext(
        settings=Settings(broker_url="kafka://127.0.0.1:9"),
        ui=UiSettings(data_dir=folder, login_max_failures=3),
        db=db,
        policy=DEFAULT_POLICY,
        metrics=WebMetrics(),
        users={"demo": User("demo", "Dr Demo", hash_password(PASSWORD))},
        access=AccessLog(folder / "access.log"),
        keys=keys,
        publisher=NoBroker(),
        clock=lambda: NOW,
    )


@pytest.fixture
def alerts(db: Database, feed: Feed) -> list[AlertEvent]:
    events, raised = story()
    apply_all(db, feed.wire(events))
    apply_all(db, feed.alerts(raised))
    return raised


@pytest.fixture
async def client(
    db: Database, tmp_path: Path, alerts: list[AlertEvent]
) -> AsyncIterator[TestClient[Any, Any]]:
    context = make_context(db, tmp_path)
    async with TestClient(TestServer(create_app(context, ingest=False))) as test_client:
        yield test_client
    context.access.close()


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def log_in(client: TestClient[Any, Any], password: str = PASSWORD) -> int:
    page = await client.get("/login")
    token = form_token(await page.text())
    response = await client.post(
        "/login",
        data={"csrf_token": token, "username": "demo", "password": password, "next": "/"},
        allow_redirects=False,
    )
    return response.status


async def test_nothing_but_healthz_and_the_login_form_answers_without_a_session(
    client: TestClient[Any, Any], alerts: list[AlertEvent]
) -> None:
    alert = alerts[0]
    for path in ("/", "/api/inbox", f"/alerts/{alert.alert_id}", "/static/plotly.min.js"):
        response = await client.get(path, allow_redirects=False)
        assert response.status in (303, 401), path
        assert alert.patient_id not in await response.text()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/static/app.css")).status == 200
    refused = await client.post(f"/alerts/{alert.alert_id}/ack", data={"action": "acknowledged"})
    assert refused.status == 403


async def test_every_response_carries_the_secure_headers(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/login", "/", "/nowhere"):
        response = await client.get(path, allow_redirects=False)
        for name, value in SECURE_HEADERS.items():
            assert response.headers[name] == value
        assert response.headers["Cache-Control"] == "no-store"
        assert "aiohttp" not in response.headers.get("Server", "")


async def test_the_inbox_lists_the_open_alert_and_logs_who_saw_which_patient(
    client: TestClient[Any, Any],
    alerts: list[AlertEvent],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    assert await log_in(client) == 303
    page = await (await client.get("/")).text()
    assert f'data-alert-id="{alerts[0].alert_id}"' in page
    assert alerts[0].patient_id in page
    entries = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [e["action"] for e in entries] == ["login", "view_inbox"]
    assert entries[1]["patients"] == [alerts[0].patient_id] and entries[1]["user"] == "demo"
    assert alerts[0].patient_id not in caplog.text  # the application log stays PHI-free


async def test_wrong_passwords_are_refused_then_the_name_is_locked(
    client: TestClient[Any, Any],
) -> None:
    assert [await log_in(client, "wrong") for _ in range(3)] == [401, 401, 401]
    assert await log_in(client) == 429


async def test_a_post_without_the_csrf_token_or_from_elsewhere_is_refused(
    client: TestClient[Any, Any], alerts: list[AlertEvent]
) -> None:
    await log_in(client)
    alert = alerts[0]
    url = f"/alerts/{alert.alert_id}/ack"
    fields = {"action": "acknowledged", "alert_event_id": alert.event_id}
    assert (await client.post(url, data=fields, allow_redirects=False)).status == 403
    token = form_token(await (await client.get(f"/alerts/{alert.alert_id}")).text())
    foreign = await client.post(
        url,
        data={**fields, "csrf_token": token},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert foreign.status == 403
    ok = await client.post(url, data={**fields, "csrf_token": token}, allow_redirects=False)
    assert ok.status == 303


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "acted_on"}, "acted_on needs a note"),
        ({"action": "overridden"}, "overridden needs a reason"),
        ({"action": "overridden", "reason": "other"}, "needs a note"),
        ({"action": "acknowledged", "reason": "other"}, "overrides only"),
        ({"action": "shrugged"}, "unknown action"),
        ({"action": "acknowledged", "alert_event_id": "nope"}, "event is unknown"),
    ],
)
async def test_an_incomplete_acknowledgement_is_refused_with_the_reason(
    client: TestClient[Any, Any],
    alerts: list[AlertEvent],
    db: Database,
    fields: dict[str, str],
    message: str,
) -> None:
    await log_in(client)
    alert = alerts[0]
    token = form_token(await (await client.get(f"/alerts/{alert.alert_id}")).text())
    response = await client.post(
        f"/alerts/{alert.alert_id}/ack",
        data={"alert_event_id": alert.event_id, "csrf_token": token, **fields},
    )
    assert response.status == 400
    assert message in await response.text()
    with db.read() as session:
        assert session.scalars(select(OutboxRow)).all() == []


async def ack_via_page(client: TestClient[Any, Any], alert: AlertEvent, **fields: str) -> None:
    token = form_token(await (await client.get(f"/alerts/{alert.alert_id}")).text())
    response = await client.post(
        f"/alerts/{alert.alert_id}/ack",
        data={"alert_event_id": alert.event_id, "csrf_token": token, **fields},
        allow_redirects=False,
    )
    assert response.status == 303


async def inbox_sections(client: TestClient[Any, Any]) -> dict[str, list[str]]:
    response = await client.get("/api/inbox")
    assert response.status == 200
    alerts = (await response.json())["alerts"]
    return {
        "acknowledged": [a["alert_id"] for a in alerts if a["acknowledgement"]],
        "open": [a["alert_id"] for a in alerts if not a["acknowledgement"]],
    }


async def test_an_escalation_brings_an_acknowledged_alert_back_unacknowledged(
    client: TestClient[Any, Any], alerts: list[AlertEvent], db: Database, feed: Feed
) -> None:
    await log_in(client)
    alert = alerts[0]
    await ack_via_page(client, alert, action="acted_on", note="IVIG ordered")
    assert await inbox_sections(client) == {"acknowledged": [alert.alert_id], "open": []}
    page = await (await client.get(f"/alerts/{alert.alert_id}")).text()
    assert "not yet sent" in page  # the broker has not confirmed it yet

    same = _event(alert, 1, Severity.WARNING)
    apply_all(db, feed.alerts([same]))
    assert await inbox_sections(client) == {"acknowledged": [alert.alert_id], "open": []}
    worse = _event(alert, 2, Severity.CRITICAL)
    apply_all(db, feed.alerts([worse]))
    assert await inbox_sections(client) == {"acknowledged": [], "open": [alert.alert_id]}


def _event(alert: AlertEvent, n: int, severity: Severity) -> AlertEvent:
    return alert.model_copy(
        update={
            "event_id": f"{alert.alert_id}:{n}",
            "action": AlertAction.UPDATED,
            "severity": severity,
        }
    )


async def test_unknown_filter_values_are_a_bad_request(client: TestClient[Any, Any]) -> None:
    await log_in(client)
    assert (await client.get("/?rule=bca_loss&severity=critical")).status == 200
    assert (await client.get("/?rule=everything")).status == 400
    assert (await client.get("/?severity=apocalyptic")).status == 400


async def test_the_timeline_page_carries_the_figure_and_the_results(
    client: TestClient[Any, Any], alerts: list[AlertEvent]
) -> None:
    await log_in(client)
    alert_page = await (await client.get(f"/alerts/{alerts[0].alert_id}")).text()
    link = re.search(r'href="(/patients/[0-9a-f]+)"', alert_page)
    assert link is not None and alerts[0].patient_id not in link.group(1)
    page = await (await client.get(link.group(1))).text()
    figure = re.search(r'id="timeline-figure">(.*?)</script>', page, re.S)
    assert figure is not None
    data = json.loads(figure.group(1))
    assert len(data["layout"]["shapes"]) > 0 and data["data"]
    for item in alerts[0].evidence:
        assert f'data-accession="{item.accession}"' in page
