"""The aiohttp application of ``carwatch web``: routes, login, CSRF, secure headers.

Why aiohttp (not Starlette): it is already in every install (Faust runs on it), it serves and
runs background work on one asyncio loop without another server package, and its middlewares
and response signals are enough for what the pages need. Pages are rendered on the server with
Jinja2 (autoescaped); database work runs in worker threads so a slow query never stalls the loop.

Access (docs/web.md "Access"):

- Nothing but ``/healthz``, the login form and its stylesheet answers without a session. Pages
  redirect to the login form; the JSON API answers 401; a POST without a session is refused (403).
- Every POST must carry the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``), and an ``Origin`` header, when the browser sends one, must be this host.
- Every response carries a strict Content-Security-Policy (scripts from this server only; no
  inline script), ``nosniff``, ``DENY`` framing, no referrer to other sites, ``no-store`` caching of pages,
  and HSTS when served over HTTPS.
- The application log names the route and the status only -- never a path, user or patient --
  and aiohttp's own access log is off (paths could name an alert). Who viewed which patient goes
  to the access log (``streams.web.accesslog``).
"""

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from importlib import resources
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web
from sqlalchemy import text

from streams.web import views
from streams.web.auth import SessionInfo, same, verify_password
from streams.web.context import CTX, SESSION, WebContext
from streams.web.ingest import Ingester

log = logging.getLogger(__name__)

INGEST_STOP = web.AppKey("ingest_stop", threading.Event)
BACKGROUND = web.AppKey("background", list)
SESSION_COOKIE = "carwatch_session"
LOGIN_COOKIE = "carwatch_login"
STATIC = Path(__file__).parent / "static"
#: served without a session: the login form's stylesheet carries no data
PUBLIC_STATIC = frozenset({"app.css"})

CSP = (
    "default-src 'none'; script-src 'self'; "
    # plotly.js inserts its stylesheet as a <style> element; scripts stay 'self' only
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin: nothing leaves for another site, and our own POSTs keep their Origin header
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_files() -> dict[str, Path]:
    """Name → file: our own assets, and plotly.js from the installed plotly package."""
    files = {path.name: path for path in STATIC.iterdir() if path.is_file()}
    plotly_js = resources.files("plotly") / "package_data" / "plotly.min.js"
    files["plotly.min.js"] = Path(str(plotly_js))
    return files


def create_app(ctx: WebContext, *, ingest: bool = True) -> web.Application:
    app = web.Application(middlewares=[_observe, _authenticate, _csrf], client_max_size=64 * 1024)
    app[CTX] = ctx
    app[BACKGROUND] = []
    app.on_response_prepare.append(_secure_headers)
    files = static_files()
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/login", login_form, name="login")
    app.router.add_post("/login", login, name="login_post")
    app.router.add_post("/logout", logout, name="logout")
    app.router.add_get("/static/{name}", _static_handler(files), name="static")
    views.add_routes(app)
    app.on_startup.append(_start_publisher)
    if ingest:
        app.on_startup.append(_start_ingester)
    app.on_cleanup.append(_stop_background)
    return app


def ctx_of(request: web.Request) -> WebContext:
    return request.app[CTX]


def user_of(request: web.Request) -> SessionInfo:
    info: SessionInfo = request[SESSION]
    return info


# -- middlewares ----------------------------------------------------------------------------


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    name = route.name if route is not None else None
    if name == "login_post":
        return "login"
    return name if name in views.ROUTE_NAMES else "unknown"


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and log every request by route name and status; turn a crash into a plain 500."""
    started = time.perf_counter()
    route = _route_name(request)
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception as exc:
        status = 500
        log.error("request to route %s failed: %s", route, type(exc).__name__)
        response = web.Response(status=500, text="internal error", content_type="text/plain")
    finally:
        ctx_of(request).metrics.requests.labels(route, str(status)).inc()
        log.info(
            "request",
            extra={
                "route": route,
                "status": status,
                "ms": round(1000 * (time.perf_counter() - started)),
            },
        )
    return response


def _public(request: web.Request) -> bool:
    route = _route_name(request)
    if route in ("healthz", "login"):
        return True
    return route == "static" and request.match_info.get("name") in PUBLIC_STATIC


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _public(request):
        return await handler(request)
    ctx = ctx_of(request)
    token = request.cookies.get(SESSION_COOKIE)
    proxied = _proxy_user(ctx, request)
    info = await asyncio.to_thread(ctx.sessions.lookup, token, ctx.clock())
    fresh_token = None
    if proxied is not None and (info is None or info.username != proxied):
        fresh_token, info = await asyncio.to_thread(ctx.sessions.create, proxied, ctx.clock())
    if info is None:
        return _refuse(request)
    request[SESSION] = info
    response = await handler(request)
    if fresh_token is not None:
        _set_session_cookie(ctx, response, fresh_token)
    return response


def _proxy_user(ctx: WebContext, request: web.Request) -> str | None:
    """The user an authenticating reverse proxy vouches for -- only from a trusted address."""
    header = ctx.ui.trusted_user_header
    if not header or request.remote not in ctx.ui.trusted_proxies:
        return None
    name = request.headers.get(header, "").strip()
    return name if 0 < len(name) <= 128 and name.isprintable() else None


def _refuse(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        return web.json_response({"error": "login required"}, status=401)
    if request.method != "GET":
        return web.Response(status=403, text="login required", content_type="text/plain")
    target = request.path_qs if request.path != "/" else "/"
    raise web.HTTPSeeOther(f"/login?next={quote(target, safe='')}")


@web.middleware
async def _csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in ("GET", "HEAD") or _route_name(request) == "login":
        return await handler(request)
    if not _same_origin(request):
        return web.Response(
            status=403, text="cross-origin request refused", content_type="text/plain"
        )
    info: SessionInfo = request[SESSION]
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type == "application/x-www-form-urlencoded":
        sent = str((await request.post()).get("csrf_token", ""))
    if not same(sent, info.csrf_token):
        return web.Response(
            status=403, text="invalid or missing CSRF token", content_type="text/plain"
        )
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """What the browser says about where a POST comes from (defence in depth beside CSRF)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURE_HEADERS)
    response.headers["Server"] = "carwatch"
    if request.app[CTX].ui.cookie_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"


def _set_session_cookie(ctx: WebContext, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=ctx.ui.cookie_secure,
        path="/",
        max_age=ctx.ui.session_max_hours * 3600,
    )


# -- public routes --------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness and database reachability; no data, no session needed."""
    ctx = ctx_of(request)

    def check() -> bool:
        with ctx.db.read() as session:
            return session.execute(text("SELECT 1")).scalar() == 1

    try:
        ok = await asyncio.to_thread(check)
    except Exception as exc:
        log.warning("healthz: database unreachable (%s)", type(exc).__name__)
        ok = False
    return web.json_response(
        {"status": "ok" if ok else "database unavailable"}, status=200 if ok else 503
    )


def _safe_next(target: str | None) -> str:
    """Only a local path: never another site, never ``//host``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_form(
    request: web.Request, error: str | None = None, status: int = 200
) -> web.Response:
    ctx = ctx_of(request)
    # keep the token of an earlier form (another tab, a redirected favicon request) valid
    token = request.cookies.get(LOGIN_COOKIE) or ""
    if not 32 <= len(token) <= 64:
        token = secrets.token_urlsafe(32)
    page = ctx.templates.get_template("login.html").render(
        csrf_token=token, next=_safe_next(request.query.get("next")), error=error
    )
    response = web.Response(text=page, content_type="text/html", status=status)
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=ctx.ui.cookie_secure,
        path="/login",
    )
    return response


async def login(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    form = await request.post()
    if not _same_origin(request) or not same(
        str(form.get("csrf_token", "")), request.cookies.get(LOGIN_COOKIE)
    ):
        return web.Response(
            status=403, text="invalid or missing CSRF token", content_type="text/plain"
        )
    username = str(form.get("username", "")).strip()[:128]
    password = str(form.get("password", ""))[:1024]
    now = ctx.clock()
    if ctx.throttle.locked(username, now.timestamp()):
        ctx.metrics.logins.labels("throttled").inc()
        ctx.access.record(now, username, "login_throttled", remote=request.remote)
        return await login_form(request, "Too many failed attempts; try again later.", 429)
    user = ctx.users.get(username)
    if not await asyncio.to_thread(verify_password, user, password):
        ctx.throttle.fail(username, now.timestamp())
        ctx.metrics.logins.labels("failure").inc()
        ctx.access.record(now, username, "login_failed", remote=request.remote)
        return await login_form(request, "Wrong user name or password.", 401)
    ctx.throttle.succeed(username)
    token, _ = await asyncio.to_thread(ctx.sessions.create, username, now)
    ctx.metrics.logins.labels("success").inc()
    ctx.access.record(now, username, "login", remote=request.remote)
    response = _see_other(_safe_next(str(form.get("next", "/"))))
    _set_session_cookie(ctx, response, token)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    await asyncio.to_thread(ctx.sessions.end, request.cookies.get(SESSION_COOKIE))
    ctx.access.record(ctx.clock(), user_of(request).username, "logout", remote=request.remote)
    response = _see_other("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def _see_other(location: str) -> web.Response:
    """A 303 that can carry cookies (an ``HTTPSeeOther`` must be raised, not returned)."""
    return web.Response(status=303, headers={"Location": location})


def _static_handler(files: dict[str, Path]) -> Handler:
    async def static(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    return static


# -- background work ------------------------------------------------------------------------


async def _start_ingester(app: web.Application) -> None:
    ctx = app[CTX]
    stop = threading.Event()
    app[INGEST_STOP] = stop
    ingester = Ingester(ctx.settings, ctx.db, ctx.policy, ctx.metrics)
    thread = threading.Thread(
        target=ingester.run, args=(stop,), name="carwatch-ingest", daemon=True
    )
    thread.start()
    app[BACKGROUND].append(thread)


async def _start_publisher(app: web.Application) -> None:
    ctx = app[CTX]
    ctx.nudge = asyncio.Event()
    app[BACKGROUND].append(asyncio.create_task(_publish_loop(ctx, ctx.nudge)))


async def _publish_loop(ctx: WebContext, nudge: asyncio.Event, every_s: float = 2.0) -> None:
    """Publish the outbox when an acknowledgement is made, and retry every ``every_s``."""
    while True:
        with suppress(TimeoutError):
            await asyncio.wait_for(nudge.wait(), timeout=every_s)
        nudge.clear()
        try:
            await asyncio.to_thread(ctx.publisher.publish_pending, ctx.clock())
        except Exception as exc:  # the database was busy or gone: try again next round
            log.warning("acknowledgement outbox not published: %s", type(exc).__name__)


async def _stop_background(app: web.Application) -> None:
    if INGEST_STOP in app:
        app[INGEST_STOP].set()
    for item in app[BACKGROUND]:
        if isinstance(item, asyncio.Task):
            item.cancel()
            with suppress(asyncio.CancelledError):
                await item
        elif isinstance(item, threading.Thread):
            await asyncio.to_thread(item.join, 15)
    await asyncio.to_thread(app[CTX].publisher.close)
