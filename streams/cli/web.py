"""``carwatch web``: the clinician pages over the read model (streams/web/, docs/web.md)."""

import sys
from typing import TYPE_CHECKING, Any

import click

from streams.cli.common import LOG_LEVELS, UsageFailure, settings_from_env, settings_of

if TYPE_CHECKING:
    from streams.web.config import UiSettings
    from streams.web.db import Database


@click.group(invoke_without_command=True)
@click.option("--host", help="Address of the pages (CARWATCH_UI_HOST, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Page port (CARWATCH_UI_PORT).")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), help="CARWATCH_UI_METRICS_PORT (9468)."
)
@click.option("--database-url", help="sqlite:///file or postgresql+psycopg://... (default file).")
@click.option("--rebuild", is_flag=True, help="Empty the read model and re-read every topic.")
@click.option("--once", is_flag=True, help="Read the topics to their end, then exit (no pages).")
@click.option("--no-ingest", is_flag=True, help="Serve pages only; another process ingests.")
@click.option("--loglevel", type=LOG_LEVELS, default="info", show_default=True)
@click.pass_context
def web(ctx: click.Context, **options: Any) -> None:
    """Serve the clinician pages: inbox, patient timelines, alerts, acknowledgements.

    Reads carwatch.alerts, .labs, .clinical and .acks into a database (SQLite file by default),
    then serves pages on 127.0.0.1 behind a login. Settings: CARWATCH_* and CARWATCH_UI_*.
    """
    if ctx.invoked_subcommand is not None:
        return
    _run(**options)


@web.command("hash-password")
def hash_password() -> None:
    """Print an Argon2id hash for a users file; the password is read from stdin, never argv."""
    from streams.web.auth import hash_password as make_hash

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UsageFailure("a password needs at least 8 characters")
    click.echo(make_hash(password))


def ui_settings(**overrides: Any) -> "UiSettings":
    from streams.web.config import UiSettings

    return settings_of(UiSettings, **overrides)


def open_database(ui: "UiSettings", *, create: bool) -> "Database":
    """Connect (and migrate when ``create``); one-line errors for what cannot be opened."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from streams.web.db import connect
    from streams.web.schema import migrate

    url = ui.db_url
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            if not create and not _exists(parsed.database):
                raise UsageFailure(f"no read model at {parsed.database}: start carwatch web first")
            if create:
                ui.data_dir.mkdir(parents=True, exist_ok=True)
        db = connect(url)
        if create:
            migrate(db)
    except (ArgumentError, SQLAlchemyError, ImportError, OSError) as exc:
        raise click.ClickException(f"cannot open the database: {type(exc).__name__}") from exc
    return db


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()


def _run(
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    database_url: str | None,
    rebuild: bool,
    once: bool,
    no_ingest: bool,
    loglevel: str,
) -> None:
    from streams.core.policy import PolicyError
    from streams.logs import configure_logging
    from streams.web.schema import clear_derived

    settings = settings_from_env()
    ui = ui_settings(host=host, port=port, metrics_port=metrics_port, database_url=database_url)
    try:
        policy = settings.load_policy()
    except PolicyError as exc:
        raise UsageFailure(str(exc)) from exc
    users = _users(ui) if not once else {}
    configure_logging(loglevel)
    db = open_database(ui, create=True)
    try:
        if rebuild:
            clear_derived(db)
            click.echo("carwatch web: read model emptied; re-reading every topic", err=True)
        if once:
            _catch_up(settings, db, policy)
            return
        _serve(settings, ui, db, policy, users, ingest=not no_ingest)
    finally:
        db.dispose()


def _users(ui: "UiSettings") -> dict[str, Any]:
    from streams.web.auth import UsersError, load_users

    if ui.users_file is None:
        if ui.trusted_user_header:
            return {}
        raise UsageFailure(
            "no users: set CARWATCH_UI_USERS_FILE (hashes from `carwatch web hash-password`) "
            "or CARWATCH_UI_TRUSTED_USER_HEADER behind an authenticating proxy"
        )
    try:
        return load_users(ui.users_file)
    except UsersError as exc:
        raise UsageFailure(str(exc)) from exc


def _catch_up(settings: Any, db: "Database", policy: Any) -> None:
    import threading

    from streams.web.ingest import Ingester
    from streams.web.metrics import WebMetrics

    metrics = WebMetrics()
    stop = threading.Event()
    try:
        Ingester(settings, db, policy, metrics).run(stop, until_caught_up=True)
    except KeyboardInterrupt:
        stop.set()
        raise click.exceptions.Abort() from None
    applied = sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "carwatch_readmodel_events"
        for sample in family.samples
        if sample.name.endswith("_total")
    )
    click.echo(f"carwatch web: caught up ({applied:.0f} records read)", err=True)


def _serve(
    settings: Any, ui: "UiSettings", db: "Database", policy: Any, users: Any, *, ingest: bool
) -> None:
    import asyncio

    from streams.metrics import MetricsServerError, serve_metrics
    from streams.web.accesslog import AccessLog
    from streams.web.acks import AckPublisher
    from streams.web.context import WebContext
    from streams.web.metrics import WebMetrics
    from streams.web.queries import PatientKeys

    metrics = WebMetrics()
    try:
        metrics_port = serve_metrics(metrics.registry, ui.metrics_host, ui.metrics_port)
    except MetricsServerError as exc:
        raise click.ClickException(str(exc)) from exc
    with db.write() as session:
        keys = PatientKeys.load(session)
    access = AccessLog(ui.access_log_path)
    context = WebContext(
        settings=settings,
        ui=ui,
        db=db,
        policy=policy,
        metrics=metrics,
        users=users,
        access=access,
        keys=keys,
        publisher=AckPublisher(settings, db, metrics),
    )
    try:
        asyncio.run(_serve_pages(context, ingest, metrics_port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {ui.host}:{ui.port}: {exc.strerror or exc}"
        ) from exc
    finally:
        access.close()


async def _serve_pages(context: Any, ingest: bool, metrics_port: int) -> None:
    from aiohttp import web as aioweb

    from streams.listeners.publisher import wait_for_signal
    from streams.web.app import create_app

    ui = context.ui
    runner = aioweb.AppRunner(create_app(context, ingest=ingest), access_log=None)
    await runner.setup()
    try:
        site = aioweb.TCPSite(runner, ui.host, ui.port)
        await site.start()
        port = runner.addresses[0][1]  # the bound one (``--port 0`` picks a free port)
        click.echo(
            f"carwatch web: listening on http://{ui.host}:{port}/ "
            f"(metrics on http://{ui.metrics_host}:{metrics_port}/metrics)",
            err=True,
        )
        await wait_for_signal()
    finally:
        await runner.cleanup()
