"""Who may see the pages: users file, password hashes, sessions, CSRF tokens, login throttle.

- Users come from a TOML file (``CARWATCH_UI_USERS_FILE``), one table per user::

      [users.asmith]
      name = "Dr A. Smith"
      password_hash = "$argon2id$v=19$m=65536,t=3,p=4$..."   # carwatch web hash-password

  Hashes are Argon2id (argon2-cffi): a memory-hard KDF, parameters in the hash itself. The file
  holds no plain password; an unknown user name costs the same verification time as a known one.
- Sessions: a random 256-bit token in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure``
  behind HTTPS); the database keeps only its SHA-256, so a copy of the database opens no
  session. A session ends after ``session_idle_minutes`` without a request, after
  ``session_max_hours`` in all, and at logout.
- CSRF: every session has its own token; every form carries it and every POST must return it
  (compared in constant time). The login form, before any session exists, uses a double-submit
  cookie.
- Throttle: ``login_max_failures`` wrong passwords for one user name within
  ``login_lockout_minutes`` lock that name for the rest of the window.
"""

import hashlib
import hmac
import secrets
import threading
import tomllib
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete

from streams.web.db import Database, WebSession

_HASHER = PasswordHasher()
#: verified against when the user name is unknown, so timing does not tell names apart
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class UsersError(ValueError):
    """The users file cannot be used (one line saying why)."""


@dataclass(frozen=True)
class User:
    username: str
    name: str
    password_hash: str | None


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def load_users(path: Path) -> dict[str, User]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsersError(f"cannot read users file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsersError(f"users file {path} is not TOML: {exc}") from exc
    table = data.get("users")
    if not isinstance(table, dict) or not table:
        raise UsersError(f"users file {path} defines no [users.<name>] table")
    users = {}
    for username, entry in table.items():
        if not isinstance(entry, dict):
            raise UsersError(f"users file {path}: users.{username} is not a table")
        password_hash = entry.get("password_hash")
        if not isinstance(password_hash, str) or not password_hash.startswith("$argon2"):
            raise UsersError(f"users file {path}: users.{username} needs an argon2 password_hash")
        name = entry.get("name", username)
        users[username] = User(username, str(name), password_hash)
    return users


def verify_password(user: User | None, password: str) -> bool:
    """Constant work whether or not the user exists; never raises for a bad hash."""
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        ok = _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and user is not None and user.password_hash is not None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (None never matches)."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class SessionInfo:
    username: str
    csrf_token: str


@dataclass
class Sessions:
    db: Database
    idle: timedelta
    lifetime: timedelta
    #: ``last_seen_at`` is written at most this often (not on every request)
    touch_every: timedelta = timedelta(seconds=60)

    def create(self, username: str, now: datetime) -> tuple[str, SessionInfo]:
        """A new session (a fresh token: never reuse one from before the login)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        with self.db.write() as session:
            session.add(
                WebSession(
                    token_hash=token_digest(token),
                    username=username,
                    csrf_token=csrf,
                    created_at=now,
                    last_seen_at=now,
                )
            )
            session.execute(
                delete(WebSession).where(
                    (WebSession.last_seen_at < now - self.idle)
                    | (WebSession.created_at < now - self.lifetime)
                )
            )
        return token, SessionInfo(username, csrf)

    def lookup(self, token: str | None, now: datetime) -> SessionInfo | None:
        if not token or len(token) > 100:
            return None
        digest = token_digest(token)
        with self.db.read() as session:
            row = session.get(WebSession, digest)
            if row is None:
                return None
            info = SessionInfo(row.username, row.csrf_token)
            expired = row.last_seen_at < now - self.idle or row.created_at < now - self.lifetime
            stale = now - row.last_seen_at > self.touch_every
        if expired:
            self.end(token)
            return None
        if stale:
            with self.db.write() as session:
                found = session.get(WebSession, digest)
                if found is not None:
                    found.last_seen_at = now
        return info

    def end(self, token: str | None) -> None:
        if not token:
            return
        with self.db.write() as session:
            session.execute(delete(WebSession).where(WebSession.token_hash == token_digest(token)))


class Throttle:
    """Failed logins per user name in a sliding window (this process; thread-safe)."""

    #: most user names tracked at once (guessing many names must not grow memory without bound)
    MAX_NAMES = 10_000

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def locked(self, username: str, now: float) -> bool:
        with self._lock:
            recent = self._recent(username, now)
            return len(recent) >= self.max_failures

    def fail(self, username: str, now: float) -> None:
        with self._lock:
            if len(self._failures) >= self.MAX_NAMES:
                for name in list(self._failures):
                    if not self._recent(name, now):
                        del self._failures[name]
            self._recent(username, now).append(now)

    def succeed(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)

    def _recent(self, username: str, now: float) -> deque[float]:
        recent = self._failures.setdefault(username, deque())
        while recent and now - recent[0] > self.window_s:
            recent.popleft()
        return recent
