"""Who is asking: HTTP Basic or the UI session, idle expiry, login throttling, CSRF.

- Users live in etcd (cluster/users.py, scrypt), so the same
  credentials work on every coordinator.
- The session is Flask's signed cookie holding the user name, a CSRF token
  and a last-seen time; the server ends it after SESSION_IDLE_TIMEOUT of
  inactivity, judged with the injected clock. The pages' own polling
  (header X-Baton-Poll) does not count as activity, so an open tab left
  alone still expires.
- Failed logins (form or Basic) are counted per user name and client
  address; after BATON_LOGIN_MAX_FAILURES the pair is locked out for
  BATON_LOGIN_LOCKOUT seconds (429). Counters live in each worker's
  memory: with 2 workers an attacker gets at most twice the attempts.
- Every POST/PUT/PATCH/DELETE made with the session carries the session's
  CSRF token (form field csrf_token or header X-CSRF-Token); Basic-auth API
  calls are exempt (a browser never sends them on its own).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from typing import Callable

from flask import current_app, g, request, session

from cluster import users as user_store
from web import etcd_access

POLL_HEADER = "X-Baton-Poll"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class LoginThrottle:
    """Lock a (user, address) pair out after repeated failures.

    With `path`, the counts live in a small JSON file under an exclusive
    flock, shared by every gunicorn worker of the coordinator (otherwise each
    worker would grant its own max_failures attempts). Without it (tests, a
    single process) they live in memory.
    """

    def __init__(self, max_failures: int, lockout: float, clock: Callable[[], float], path: str | None = None):
        self.max_failures = max_failures
        self.lockout = lockout
        self.clock = clock
        self.path = path
        self._memory: dict[str, list[float]] = {}  # "user\naddress" -> [failures, locked_until]
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _table(self):
        """The failure table, locked for this thread and (with a file) for every worker."""
        with self._lock:
            if not self.path:
                yield self._memory
                return
            with open(self.path, "a+", encoding="utf-8") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.seek(0)
                try:
                    table = json.loads(f.read() or "{}")
                except ValueError:
                    table = {}
                yield table
                f.seek(0)
                f.truncate()
                f.write(json.dumps(table))

    def seconds_locked(self, user: str, address: str) -> float:
        with self._table() as table:
            entry = table.get(f"{user}\n{address}")
            return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def failed(self, user: str, address: str) -> None:
        with self._table() as table:
            if len(table) > 10_000:  # bounded under a spray of names
                now = self.clock()
                for key in [k for k, (_, until) in table.items() if until <= now]:
                    del table[key]
            key = f"{user}\n{address}"
            count, until = table.get(key, [0, 0.0])
            count += 1
            if count >= self.max_failures:
                until, count = self.clock() + self.lockout, 0
            table[key] = [count, until]

    def succeeded(self, user: str, address: str) -> None:
        with self._table() as table:
            table.pop(f"{user}\n{address}", None)


class _VerifiedCache:
    """Remembers recent successful Basic-auth checks: scrypt is slow on purpose,
    and a CLI polling a build would otherwise pay it on every request."""

    def __init__(self, ttl: float = 300.0):
        self.ttl = ttl
        self._items: dict[tuple, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str, password: str, record: dict) -> tuple:
        digest = hashlib.sha256(password.encode()).hexdigest()
        return (name, digest, repr(sorted((record.get("scrypt") or record).items())))

    def hit(self, name, password, record, now) -> bool:
        with self._lock:
            return self._items.get(self._key(name, password, record), 0) > now

    def store(self, name, password, record, now) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[self._key(name, password, record)] = now + self.ttl


def init_app(app) -> None:
    cfg = app.config
    state = cfg.get("BATON_DAEMON_STATE")
    shared = os.path.join(os.path.dirname(os.path.abspath(state)), f"{cfg['BATON_NAME']}.login-failures.json") \
        if state else None
    app.extensions["baton_throttle"] = LoginThrottle(
        int(cfg["BATON_LOGIN_MAX_FAILURES"]), float(cfg["BATON_LOGIN_LOCKOUT"]), cfg["BATON_CLOCK"], shared)
    app.extensions["baton_verified"] = _VerifiedCache()


def throttle() -> LoginThrottle:
    return current_app.extensions["baton_throttle"]


def now() -> float:
    return current_app.config["BATON_CLOCK"]()


def client_address() -> str:
    return request.remote_addr or "?"


def lookup_user(name: str) -> dict | None:
    """The user record from etcd, or None."""
    if not name:
        return None
    return user_store.get_user(etcd_access.client(), etcd_access.keys(), name)


def check_password(name: str, password: str) -> dict | None:
    """The user's record when the password is right, else None (no throttling here)."""
    record = lookup_user(name)
    if record is None:
        # verify_password spends a real check's time on a missing record, so a
        # wrong name cannot be told from a wrong password by timing.
        user_store.verify_password(password, None)
        return None
    cache = current_app.extensions["baton_verified"]
    t = now()
    if cache.hit(name, password, record, t):
        return record
    if user_store.verify_password(password, record):
        cache.store(name, password, record, t)
        return record
    return None


def basic_credentials() -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return ("", "")
    name, _, password = decoded.partition(":")
    return name, password


def identify() -> None:
    """Set g.user ({name, role} or None), g.via ("basic"|"session"|None), g.auth_error.

    Called before every request. Basic credentials that are wrong set
    g.auth_error (401, or 429 while locked out); an idle session is ended.
    """
    g.user, g.via, g.auth_error, g.session_expired = None, None, None, False
    creds = basic_credentials()
    if creds is not None:
        name, password = creds
        address = client_address()
        if throttle().seconds_locked(name, address) > 0:
            g.auth_error = 429
            return
        record = check_password(name, password) if name else None
        if record is None:
            throttle().failed(name, address)
            g.auth_error = 401
            return
        throttle().succeeded(name, address)
        g.user, g.via = {"name": name, "role": record.get("role", "viewer")}, "basic"
        return
    name = session.get("user")
    if not name:
        return
    timeout = current_app.config["SESSION_IDLE_TIMEOUT"]
    t = now()
    if t - float(session.get("last_seen", 0)) > timeout:
        session.clear()
        g.session_expired = True
        return
    record = lookup_user(name)
    if record is None:  # the user was removed: the session dies with it
        session.clear()
        return
    if not request.headers.get(POLL_HEADER):
        session["last_seen"] = t
    g.user, g.via = {"name": name, "role": record.get("role", "viewer")}, "session"


def start_session(name: str) -> None:
    """A fresh session (new CSRF token) for a user who just logged in."""
    session.clear()
    session["user"] = name
    session["last_seen"] = now()
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """True unless this is a session-borne (or anonymous) write without the right token."""
    if request.method not in UNSAFE_METHODS or g.get("via") == "basic":
        return True
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token", "")
    return bool(expected) and hmac.compare_digest(str(sent), str(expected))
