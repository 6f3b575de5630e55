"""The pages and the JSON API: inbox, patient timeline, alert detail, acknowledge.

Each handler reads in a worker thread, records in the access log who saw which patient, and
renders a template (``templates/``) or JSON. Query parameters and form fields are checked against
their vocabularies; anything else is a 400 with one line saying why, never a traceback.
"""

import asyncio
from enum import StrEnum
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy import func, select

from schemas.ack import AckAction, OverrideReason
from schemas.vocab import RuleName, Severity
from streams.web import acks as ackbook
from streams.web import charts
from streams.web.auth import SessionInfo
from streams.web.context import CTX, SESSION, WebContext
from streams.web.db import AlertEventRow, OutboxRow
from streams.web.metrics import ROUTES
from streams.web.queries import (
    AlertDetail,
    Freshness,
    InboxItem,
    PatientCourse,
    alert_detail,
    day_number,
    freshness,
    inbox,
    patient_course,
)
from streams.web.timeline import LabPoint, bands, lab_points

ROUTE_NAMES = frozenset(ROUTES)
E = TypeVar("E", bound=StrEnum)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", inbox_page, name="inbox")
    app.router.add_get("/patients/{key}", patient_page, name="patient")
    app.router.add_get("/alerts/{alert_id}", alert_page, name="alert")
    app.router.add_post("/alerts/{alert_id}/ack", ack, name="ack")
    app.router.add_get("/api/inbox", api_inbox, name="api_inbox")
    app.router.add_get("/api/alerts/{alert_id}", api_alert, name="api_alert")


def _ctx(request: web.Request) -> WebContext:
    return request.app[CTX]


def _user(request: web.Request) -> SessionInfo:
    info: SessionInfo = request[SESSION]
    return info


def _choice(enum: type[E], value: str | None, what: str) -> E | None:
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"unknown {what} (see the filter list)") from None


def _page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    ctx = _ctx(request)
    user = _user(request)
    name = ctx.users[user.username].name if user.username in ctx.users else user.username
    html = ctx.templates.get_template(template).render(
        user=user, user_name=name, now=ctx.clock(), **values
    )
    return web.Response(text=html, content_type="text/html", status=status)


def _pending(session: Any) -> int:
    query = select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None))
    return int(session.scalar(query) or 0)


# -- inbox ----------------------------------------------------------------------------------


async def _inbox_items(
    request: web.Request,
) -> tuple[list[InboxItem], Freshness, int, RuleName | None, Severity | None]:
    ctx = _ctx(request)
    rule = _choice(RuleName, request.query.get("rule"), "rule")
    severity = _choice(Severity, request.query.get("severity"), "severity")
    now = ctx.clock()

    def read() -> tuple[list[InboxItem], Freshness, int]:
        with ctx.db.read() as session:
            items = inbox(session, ctx.keys, now, ctx.policy.tz, rule, severity)
            return items, freshness(session, now, ctx.ui.stale_after_seconds), _pending(session)

    items, fresh, pending = await asyncio.to_thread(read)
    ctx.access.record(
        now,
        _user(request).username,
        "view_inbox",
        remote=request.remote,
        patients=sorted({item.alert.patient_id for item in items}),
    )
    return items, fresh, pending, rule, severity


async def inbox_page(request: web.Request) -> web.Response:
    items, fresh, pending, rule, severity = await _inbox_items(request)
    return _page(
        request,
        "inbox.html",
        open_items=[i for i in items if i.ack is None],
        acked_items=[i for i in items if i.ack is not None],
        fresh=fresh,
        pending=pending,
        rules=list(RuleName),
        severities=list(Severity),
        rule=rule,
        severity=severity,
    )


async def api_inbox(request: web.Request) -> web.Response:
    items, fresh, _, _, _ = await _inbox_items(request)
    return web.json_response(
        {
            "data_as_of": fresh.caught_up_at.isoformat() if fresh.caught_up_at else None,
            "stale": fresh.stale,
            "alerts": [_inbox_json(item) for item in items],
        }
    )


def _inbox_json(item: InboxItem) -> dict[str, Any]:
    alert = item.alert
    return {
        "alert_id": alert.alert_id,
        "patient_id": alert.patient_id,
        "rule": alert.rule,
        "severity": alert.severity,
        "summary": alert.summary,
        "day": alert.day,
        "day_today": item.today,
        "raised_at": alert.raised_at.isoformat(),
        "updated_at": alert.updated_at.isoformat(),
        "last_event_id": alert.last_event_id,
        "acknowledgement": None if item.ack is None else _ack_json(item.ack),
    }


def _ack_json(view: Any) -> dict[str, Any]:
    return {
        "event_id": view.event_id,
        "alert_event_id": view.alert_event_id,
        "action": view.action,
        "reason": view.reason,
        "note": view.note,
        "by": view.by,
        "at": view.at.isoformat(),
        "via": view.via,
        "pending": view.pending,
    }


# -- one alert --------------------------------------------------------------------------------


async def _detail(request: web.Request) -> tuple[AlertDetail, Freshness]:
    ctx = _ctx(request)
    alert_id = request.match_info["alert_id"]
    now = ctx.clock()

    def read() -> tuple[AlertDetail | None, Freshness]:
        with ctx.db.read() as session:
            return (
                alert_detail(session, ctx.keys, alert_id),
                freshness(session, now, ctx.ui.stale_after_seconds),
            )

    detail, fresh = await asyncio.to_thread(read)
    if detail is None:
        raise web.HTTPNotFound(text="no such alert")
    ctx.access.record(
        now,
        _user(request).username,
        "view_alert",
        remote=request.remote,
        patient_id=detail.alert.patient_id,
        alert_id=alert_id,
    )
    return detail, fresh


async def alert_page(request: web.Request) -> web.Response:
    detail, fresh = await _detail(request)
    return _alert_response(request, detail, fresh)


def _alert_response(
    request: web.Request,
    detail: AlertDetail,
    fresh: Freshness,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> web.Response:
    return _page(
        request,
        "alert.html",
        status=400 if error else 200,
        detail=detail,
        latest=detail.events[-1].payload,
        fresh=fresh,
        actions=list(AckAction),
        reasons=list(OverrideReason),
        error=error,
        form=form or {},
        done=request.query.get("done") == "ack",
    )


async def api_alert(request: web.Request) -> web.Response:
    detail, fresh = await _detail(request)
    return web.json_response(
        {
            "alert_id": detail.alert.alert_id,
            "status": detail.alert.status,
            "severity": detail.alert.severity,
            "acknowledged": detail.current is not None,
            "events": [event.payload for event in detail.events],
            "acknowledgements": [_ack_json(view) for view in detail.acks],
            "data_as_of": fresh.caught_up_at.isoformat() if fresh.caught_up_at else None,
        }
    )


async def ack(request: web.Request) -> web.StreamResponse:
    """Keep the acknowledgement in the outbox, wake the publisher, show the alert again."""
    ctx = _ctx(request)
    form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
    alert_id = request.match_info["alert_id"]
    now = ctx.clock()
    user = _user(request).username

    def make() -> tuple[str | None, str]:
        with ctx.db.read() as session:
            detail = alert_detail(session, ctx.keys, alert_id)
            seen = session.get(AlertEventRow, form.get("alert_event_id", "")[:200])
        if detail is None:
            raise web.HTTPNotFound(text="no such alert")
        patient_id = detail.alert.patient_id
        if seen is None:
            return "that alert event is unknown", patient_id
        try:
            event = ackbook.build_ack(
                detail.alert,
                seen,
                action=form.get("action", ""),
                reason=form.get("reason") or None,
                note=form.get("note"),
                by=user,
                via="web",
                now=now,
            )
        except ackbook.AckRefused as exc:
            return str(exc), patient_id
        ackbook.keep(ctx.db, event, now)
        return None, patient_id

    error, patient_id = await asyncio.to_thread(make)
    if error is not None:
        detail, fresh = await _detail(request)
        return _alert_response(request, detail, fresh, error=error, form=form)
    if ctx.nudge is not None:
        ctx.nudge.set()
    ctx.access.record(
        now,
        user,
        "ack",
        remote=request.remote,
        patient_id=patient_id,
        alert_id=alert_id,
        ack=form.get("action"),
    )
    raise web.HTTPSeeOther(f"/alerts/{alert_id}?done=ack")


# -- one patient ----------------------------------------------------------------------------


async def patient_page(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    key = request.match_info["key"]
    now = ctx.clock()

    def read() -> tuple[PatientCourse, Freshness] | None:
        with ctx.db.read() as session:
            patient_id = ctx.keys.patient(session, key)
            if patient_id is None:
                return None
            course = patient_course(session, ctx.keys, patient_id)
            return course, freshness(session, now, ctx.ui.stale_after_seconds)

    found = await asyncio.to_thread(read)
    if found is None:
        raise web.HTTPNotFound(text="no such patient")
    course, fresh = found
    ctx.access.record(
        now,
        _user(request).username,
        "view_patient",
        remote=request.remote,
        patient_id=course.patient_id,
    )
    figure, points = await asyncio.to_thread(_chart, ctx, course)
    infused = course.patient.infused_at if course.patient else None
    return _page(
        request,
        "patient.html",
        course=course,
        points=points,
        figure=figure,
        fresh=fresh,
        today=None if infused is None else day_number(now, infused, ctx.policy.tz),
        analytes=_analyte_order(points),
    )


def _chart(ctx: WebContext, course: PatientCourse) -> tuple[str, list[LabPoint]]:
    infused = course.patient.infused_at if course.patient else None
    points = lab_points(course.labs, course.alerts, infused, ctx.policy.tz)
    events = [(e.kind, e.at, e.detail) for e in course.events]
    figure = charts.timeline_figure(
        points, bands(course.alerts), events, infused, ctx.policy, ctx.clock()
    )
    return charts.figure_json(figure), points


def _analyte_order(points: list[LabPoint]) -> list[str]:
    charted = [panel.analyte for panel in charts.PANELS]
    others = sorted({p.row.analyte for p in points} - set(charted))
    return [a for a in charted if any(p.row.analyte == a for p in points)] + others
