"""Baton's web UI and JSON API: `create_app(config) -> Flask`.

One blueprint per area (auth, overview, agents, builds, settings, users,
api, ops). The app reads the cluster from etcd and writes only where
web/authority.py allows: builds and cancellations on the coordinator serving
agents, every other change on the primary that leads; it never decides
leadership itself. The etcd client is created per worker process on first
use (web/etcd_access.py), never at import time: gRPC does not survive fork().
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Mapping

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from lease.errors import EtcdError, EtcdUnavailable, NotLeader

log = logging.getLogger("baton.web")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from a config dict (tests) or, when None, from the environment."""
    from web import config as web_config
    from web import etcd_access, security
    from web.cluster_view import DecodeCache, SpecCache

    cfg = web_config.normalise(web_config.from_env() if config is None else config)
    app = Flask(__name__)
    app.config.update(cfg)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg["BATON_HTTPS"],
        # Cookies ignore ports: coordinators sharing a host (baton up) need their own
        # cookie names or each login would overwrite the other's session.
        SESSION_COOKIE_NAME=f"baton_{cfg['BATON_CLUSTER']}_{cfg['BATON_NAME']}",
        # The cookie may outlive the idle timeout; the server-side check ends it.
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=max(cfg["SESSION_IDLE_TIMEOUT"], 60) * 8),
        MAX_CONTENT_LENGTH=cfg["MAX_CONTENT_LENGTH"], JSON_SORT_KEYS=False)
    etcd_access.init_app(app)
    security.init_app(app)
    app.extensions["baton_spec_cache"] = SpecCache()
    app.extensions["baton_decode_cache"] = DecodeCache()

    from web import agents, api, auth, builds, ops, overview, settings_page, users_page
    for module in (auth, overview, agents, builds, settings_page, users_page, api, ops):
        app.register_blueprint(module.bp)

    _install_hooks(app)
    _install_error_handlers(app)
    return app


def _install_hooks(app: Flask) -> None:
    from web import security
    from web.guards import refuse

    @app.before_request
    def identify_and_check():
        g.started = time.perf_counter()
        if request.endpoint in ("static", "ops.leader", "ops.healthz", "ops.metrics"):
            g.user, g.via, g.session_expired = None, None, False
            return None
        security.identify()
        if g.auth_error == 429:
            return refuse(429, "too many failed logins from this address; try again in a minute")
        if g.auth_error == 401:
            return refuse(401, "wrong user name or password")
        refusal = security.write_refusal()
        return refuse(*refusal) if refusal else None

    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.context_processor
    def page_context():
        from web.guards import authority, primary_name, snapshot
        from web.status import banner
        ctx = {"me": app.config["BATON_NAME"], "my_role": app.config["BATON_ROLE"],
               "user": g.get("user"), "csrf_token": security.csrf_token, "banner": None, "writable": False,
               "accepts_builds": False,
               "fmt_time": _fmt_time, "fmt_duration": _fmt_duration}
        if g.get("user"):
            try:
                auth = authority()
                ctx["writable"] = auth.writable
                ctx["accepts_builds"] = auth.accepts_builds
                ctx["banner"] = banner(auth, snapshot(), primary_name())
            except EtcdError:
                ctx["banner"] = {"text": "etcd does not answer — the data shown may be incomplete.",
                                 "link": None, "link_text": None}
        return ctx


def _fmt_time(t: float | None) -> str:
    if not t:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _install_error_handlers(app: Flask) -> None:
    from web import actions
    from web.authority import Conflict
    from web.guards import authority, read_only_refusal, refuse

    @app.errorhandler(actions.Invalid)
    def invalid(exc):
        return refuse(400, str(exc))

    @app.errorhandler(actions.NotFound)
    def not_found(exc):
        return refuse(404, str(exc))

    @app.errorhandler(actions.Ended)
    def ended(exc):
        return refuse(409, str(exc))

    @app.errorhandler(NotLeader)
    def lost_leadership(exc):
        # The check passed but the commit's fence did not: leadership moved.
        g.pop("authority", None)
        g.pop("snapshot", None)
        try:
            return read_only_refusal(authority(), g.get("work", False))
        except EtcdError:
            return refuse(403, "this coordinator no longer leads; try the coordinator that serves agents")

    @app.errorhandler(Conflict)
    def conflict(exc):
        return refuse(409, "the data changed while it was being saved; reload and try again")

    @app.errorhandler(EtcdUnavailable)
    def etcd_down(exc):
        log.warning("etcd unavailable: %s", exc)
        return refuse(503, "etcd does not answer right now; try again in a few seconds")

    @app.errorhandler(EtcdError)
    def etcd_error(exc):
        log.error("etcd error: %s", exc)
        return refuse(503, "etcd refused the request; see the coordinator's log")

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return refuse(413, f"the request is larger than {app.config['MAX_CONTENT_LENGTH'] // 1024} KiB")

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if request.path.startswith("/api/"):
            response = jsonify({"error": exc.description})
            response.status_code = exc.code or 500
            return response
        return exc
