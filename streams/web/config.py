"""Settings of ``carwatch web``: ``CARWATCH_UI_*`` environment variables (pydantic-settings).

Broker, topics and policy come from the shared ``streams.settings.Settings`` (``CARWATCH_*``);
these are the web's own. The prefix is ``UI``, not ``WEB``: ``CARWATCH_WEB_HOST``/``_PORT`` already
name the Faust worker's internal web server.

Everything binds 127.0.0.1 unless configured. Pages need a login: users and their password
hashes come from ``users_file`` (TOML, see ``streams.web.auth``), or from the identity header of
an authenticating reverse proxy (``trusted_user_header``), believed only from the addresses in
``trusted_proxies``.
"""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UiSettings(BaseSettings):
    """Clinician web (``carwatch web``, and the database ``carwatch alerts ack`` writes to)."""

    model_config = SettingsConfigDict(env_prefix="CARWATCH_UI_", extra="ignore", frozen=True)

    #: address of the clinician pages (they show PHI: loopback unless a proxy needs more)
    host: str = "127.0.0.1"
    #: port of the clinician pages
    port: int = Field(default=8468, ge=0, le=65535)
    #: address of the web's Prometheus metrics
    metrics_host: str = "127.0.0.1"
    #: The web's metrics port (docs/runbook.md), apart from the page port (pages need a login)
    metrics_port: int = Field(default=9468, ge=0, le=65535)
    #: SQLite file, access log and other local state live here unless set one by one
    data_dir: Path = Path("var/web")
    #: ``sqlite:///path`` (default: ``data_dir/web.db``) or ``postgresql+psycopg://user@host/db``
    database_url: str | None = None
    #: TOML users file: ``[users.<name>]`` with ``name`` and an Argon2id ``password_hash``
    users_file: Path | None = None
    #: e.g. ``X-Forwarded-User``: the user name an authenticating reverse proxy sets
    trusted_user_header: str | None = None
    #: the only peer addresses whose ``trusted_user_header`` is believed
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    #: the access log (who viewed which patient), kept apart from the PHI-free application log
    access_log: Path | None = None
    #: set when served over HTTPS (directly or behind a TLS proxy): Secure cookies and HSTS
    cookie_secure: bool = False
    #: a session ends after this many minutes without a request
    session_idle_minutes: int = Field(default=30, ge=1)
    #: a session ends this many hours after the login, whatever happened since
    session_max_hours: int = Field(default=12, ge=1)
    #: wrong passwords for one user name within the lockout window that lock the name
    login_max_failures: int = Field(default=5, ge=1)
    #: the login throttle's window and lock time
    login_lockout_minutes: int = Field(default=15, ge=1)
    #: pages warn when the data is older than this (the ingester did not catch up since)
    stale_after_seconds: float = Field(default=60.0, gt=0)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'web.db'}"

    @property
    def access_log_path(self) -> Path:
        return self.access_log or self.data_dir / "access.log"
