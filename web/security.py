"""Who is asking and may they: HTTP Basic or the UI session, idle expiry, login
throttling, and the checks every write passes (same site, JSON, CSRF).

- Users live in etcd (cluster/users.py, scrypt), so the same
  credentials work on every coordinator.
- The session is Flask's signed cookie holding the user name, a CSRF token,
  a last-seen time and the id of the session's record in etcd
  (web/sessions.py: logout, a password change or the user's deletion end
  it on every worker and coordinator); the server ends it after
  SESSION_IDLE_TIMEOUT of inactivity, judged with the injected clock. The pages' own polling
  (header X-Baton-Poll) does not count as activity, so an open tab left
  alone still expires.
- Failed logins (form or Basic) are counted in etcd for the whole cluster,
  per (user name, address) and per address (web/throttle.py): 429 while
  locked out.
- Every POST/PUT/PATCH/DELETE (write_refusal) is refused when it names
  another site in Origin or Referer (403): a page elsewhere can make the
  browser send the session cookie and cached Basic credentials, but not
  hide where it comes from. API writes must be JSON (a build may also be
  YAML), 415 otherwise: the content types a cross-site form can send
  without the browser asking us first (CORS) are exactly the others. An
  API write without credentials gets 401 before anything else. Writes made
  with the session carry its CSRF token (form field csrf_token or header
  X-CSRF-Token); Basic-auth calls need none (the checks above suffice).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from urllib.parse import urlsplit

from flask import current_app, g, request, session

from cluster import users as user_store
from web import etcd_access, sessions
from web.throttle import EtcdCounts, LoginThrottle

__all__ = ["LoginThrottle", "identify", "start_session", "end_session", "write_refusal", "csrf_token"]

POLL_HEADER = "X-Baton-Poll"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


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
    app.extensions["baton_throttle"] = LoginThrottle(
        int(cfg["BATON_LOGIN_MAX_FAILURES"]), float(cfg["BATON_LOGIN_LOCKOUT"]), cfg["BATON_CLOCK"],
        EtcdCounts(lambda: etcd_access.client(app)), int(cfg["BATON_LOGIN_MAX_FAILURES_PER_ADDRESS"]),
        etcd_access.keys(app))
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
        end_session()
        g.session_expired = True
        return
    record = lookup_user(name)
    etcd, keys = etcd_access.client(), etcd_access.keys()
    valid, meta = sessions.session_valid(etcd, keys, name, session.get("sid"), record)
    if not valid:  # logged out elsewhere, password changed, user removed
        end_session(meta is not None)
        return
    if not request.headers.get(POLL_HEADER):
        session["last_seen"] = t
        if t - float(session.get("renewed", 0)) > _lifetime() / 4:
            sessions.renew(etcd, meta)
            session["renewed"] = t
    g.user, g.via = {"name": name, "role": record.get("role", "viewer")}, "session"


def _lifetime() -> float:
    return current_app.permanent_session_lifetime.total_seconds()


def start_session(name: str, record: dict) -> None:
    """A fresh session (new id and CSRF token) for a user who just logged in."""
    session.clear()
    t = now()
    session["sid"] = sessions.open_session(etcd_access.client(), etcd_access.keys(), name, record,
                                           current_app.config["BATON_NAME"], t, _lifetime())
    session["user"] = name
    session["last_seen"] = session["renewed"] = t
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True


def end_session(forget_record: bool = True) -> None:
    """Log out: the session's record goes (so copies of the cookie die too), then the cookie."""
    if forget_record and session.get("sid"):
        sessions.close_session(etcd_access.client(), etcd_access.keys(), session.get("user"), session.get("sid"))
    session.clear()


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


JSON_TYPES = ("application/json",)
# The build API also takes the YAML form of a build file (the CLI sends it as such).
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def write_refusal() -> tuple[int, str] | None:
    """(status, sentence) when this write must be refused before it runs, else None.

    Call after identify(). Order: an API write without credentials is 401
    (the client should authenticate, whatever else is wrong); a write from
    another site 403; an API body that is not JSON 415; a session write
    without its CSRF token 400.
    """
    if request.method not in UNSAFE_METHODS:
        return None
    api = request.path.startswith("/api/")
    if api and g.user is None:
        return 401, "log in first: send HTTP Basic credentials of a Baton user"
    foreign = foreign_origin()
    if foreign:
        return 403, f"this request comes from another site ({foreign}); Baton takes changes only from its own pages"
    if api and not _acceptable_body():
        return 415, "send the request body as application/json"
    if not csrf_ok():
        return 400, "the form's security token is missing or out of date; reload the page and try again"
    return None


def own_origin() -> str:
    return f"{request.scheme}://{request.host}".lower()


def foreign_origin() -> str | None:
    """The other site a write comes from (Origin, else Referer), or None when it names
    this coordinator or nothing (the CLI and other non-browser clients send neither)."""
    origin = request.headers.get("Origin")
    if origin is None and request.referrer:
        parts = urlsplit(request.referrer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin is None:
        return None
    # "null" (a sandboxed frame, a file: page, some redirects) is never our own page.
    return None if origin.strip().lower() == own_origin() else origin.strip()[:100]


def _acceptable_body() -> bool:
    """An API write's body is JSON (or YAML for a build); an empty body needs no type."""
    if request.mimetype in JSON_TYPES:
        return True
    if request.mimetype in YAML_TYPES and request.endpoint == "api.submit_build":
        return True
    return not request.mimetype and not request.content_length and not request.get_data(cache=True)


def csrf_ok() -> bool:
    """True unless this is a session-borne (or anonymous) write without the right token."""
    if request.method not in UNSAFE_METHODS or g.get("via") == "basic":
        return True
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token", "")
    return bool(expected) and hmac.compare_digest(str(sent), str(expected))
