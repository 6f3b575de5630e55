"""Fuzzing what the web reads: topic records, form fields, query parameters, paths, the users
file. Nothing may crash (no 500, no exception), nothing may be echoed unescaped, and a redirect
never leaves the site. Inputs: hypothesis, and the committed corpus tests/data/web/nasty_inputs.txt.
"""

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.policy import DEFAULT_POLICY
from streams.web.acks import AckRefused, build_ack
from streams.web.app import _safe_next, create_app
from streams.web.auth import UsersError, load_users
from streams.web.db import AlertEventRow, AlertRow, Database
from streams.web.readmodel import ReadOutcome, Source, apply_record
from tests.unit.web.test_pages import PASSWORD, form_token, make_context
from tests.unit.web.webtools import Feed, apply_all, story

CORPUS = [
    line
    for line in (Path(__file__).parents[2] / "data" / "web" / "nasty_inputs.txt")
    .read_text(encoding="utf-8")
    .splitlines()
    if not line.startswith("#")
]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(
    st.sampled_from(list(Source)), st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
)
def test_any_topic_record_is_applied_or_counted_never_raises(
    db: Database, source: Source, raw: bytes
) -> None:
    with db.write() as session:
        applied = apply_record(session, Feed().record(source, raw), DEFAULT_POLICY)
    assert applied.outcome in ReadOutcome


@FUZZ
@given(
    st.text(max_size=40) | st.sampled_from(["acknowledged", "acted_on", "overridden"]),
    st.none() | st.text(max_size=40) | st.sampled_from(["other", "result_in_error"]),
    st.none() | st.text(max_size=2000),
    st.text(max_size=200),
)
def test_an_acknowledgement_is_built_or_refused_with_a_reason(
    action: str, reason: str | None, note: str | None, by: str
) -> None:
    alert = AlertRow(alert_id="a1", patient_id="P1", attention_seq=1)
    seen = AlertEventRow(event_id="a1:0", alert_id="a1")
    try:
        ack = build_ack(
            alert,
            seen,
            action=action,
            reason=reason,
            note=note,
            by=by,
            via="web",
            now=datetime.now(UTC),
        )
    except AckRefused as exc:
        assert str(exc)
    else:
        assert ack.alert_event_id == "a1:0" and ack.by == by.strip()


@given(st.text(max_size=200) | st.sampled_from(CORPUS))
def test_the_login_redirect_never_leaves_the_site(target: str) -> None:
    safe = _safe_next(target)
    assert safe.startswith("/") and not safe.startswith("//") and "\\" not in safe


@FUZZ
@given(st.text(max_size=500))
def test_any_users_file_loads_or_is_refused_with_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text, encoding="utf-8")
    try:
        users = load_users(path)
    except UsersError as exc:
        assert "\n" not in str(exc).strip()
    else:
        assert all(user.password_hash for user in users.values())


async def _probe(client: TestClient[Any, Any], value: str, alert_id: str, event_id: str) -> None:
    """Send ``value`` through every input of the pages; assert no crash and no raw echo."""
    quoted = quote(value, safe="")
    responses = [
        await client.get(f"/?rule={quoted}&severity={quoted}"),
        await client.get(f"/alerts/{quoted}"),
        await client.get(f"/patients/{quoted}"),
        await client.get(f"/api/alerts/{quoted}"),
        await client.get(f"/login?next={quoted}"),
    ]
    page = await (await client.get(f"/alerts/{alert_id}")).text()
    token = form_token(page)
    for fields in (
        {"action": value, "alert_event_id": event_id},
        {"action": "overridden", "reason": value, "alert_event_id": event_id},
        {"action": "acted_on", "note": value, "alert_event_id": event_id},
        {"action": "acknowledged", "alert_event_id": value},
    ):
        responses.append(
            await client.post(
                f"/alerts/{alert_id}/ack",
                data={**fields, "csrf_token": token},
                allow_redirects=False,
            )
        )
    for response in responses:
        assert response.status < 500, (value, response.url)
        body = await response.text()
        assert "<script>alert" not in body and "<img src=x" not in body


async def _session(db: Database, folder: Path, values: list[str]) -> None:
    context = make_context(db, folder)
    try:
        async with TestClient(TestServer(create_app(context, ingest=False))) as client:
            page = await (await client.get("/login")).text()
            await client.post(
                "/login",
                data={"csrf_token": form_token(page), "username": "demo", "password": PASSWORD},
            )
            _, alerts = story()
            for value in values:
                await _probe(client, value, alerts[0].alert_id, alerts[0].event_id)
    finally:
        context.access.close()


@pytest.fixture
def story_db(db: Database, feed: Feed) -> Database:
    events, alerts = story()
    apply_all(db, feed.wire(events))
    apply_all(db, feed.alerts(alerts))
    return db


def test_the_nasty_corpus_goes_through_every_input_without_harm(
    story_db: Database, tmp_path: Path
) -> None:
    asyncio.run(_session(story_db, tmp_path, CORPUS))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=4))
def test_generated_inputs_go_through_every_input_without_harm(
    story_db: Database, tmp_path: Path, values: list[str]
) -> None:
    asyncio.run(_session(story_db, tmp_path, values))
