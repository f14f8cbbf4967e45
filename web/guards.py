"""Refusals and the checks in front of views: logged in, admin, writable, serving.

A refusal is JSON for /api/ paths ({"error": sentence, ...}) and an HTML
page for the UI, always with one sentence a user can act on.
"""
from __future__ import annotations

import functools
from typing import Callable

from flask import current_app, g, jsonify, redirect, render_template, request, url_for

from cluster.records import CoordinatorRecord
from web import etcd_access
from web.authority import Authority, read_authority, write_fence
from web.cluster_view import Snapshot, read_snapshot
from web.links import coordinator_web_url


def wants_json() -> bool:
    return request.path.startswith("/api/")


def refuse(status: int, message: str, **extra):
    """The response for a refused request (never raises)."""
    if wants_json():
        response = jsonify(dict({"error": message}, **extra))
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="baton"'
        return response
    return render_template("message.html", status=status, message=message, extra=extra), status


def login_required(view: Callable) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            if wants_json():
                return refuse(401, "log in first: send HTTP Basic credentials of a Baton user")
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?"),
                                    expired="1" if g.session_expired else None))
        return view(*args, **kwargs)
    return wrapped


def admin_required(view: Callable) -> Callable:
    @functools.wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if g.user.get("role") != "admin":
            return refuse(403, f"{g.user['name']} is a viewer; only an admin may change this.")
        return view(*args, **kwargs)
    return wrapped


def authority() -> Authority:
    """This request's view of leadership (read once per request)."""
    if "authority" not in g:
        snap = g.get("snapshot")
        g.authority = read_authority(etcd_access.client(), etcd_access.keys(), current_app.config,
                                     leader_kv=snap.leader_kv if snap is not None else None)
    return g.authority


def snapshot() -> Snapshot:
    """This request's cluster snapshot (read once per request)."""
    if "snapshot" not in g:
        g.snapshot = read_snapshot(etcd_access.client(), etcd_access.keys(),
                                   cache=current_app.extensions["baton_decode_cache"])
    return g.snapshot


def read_only_refusal(auth: Authority, work: bool = False):
    """The 403 for a write on a coordinator that may not make it now, naming where to go:
    for work (builds, cancellations) the coordinator serving agents, for changes the primary."""
    primary = primary_name()
    target = auth.target(work, primary)
    if target is None:
        target_web = None
    elif target == auth.leader_name:
        target_web = coordinator_web_url(target, auth.leader.web if auth.leader else None)
    else:
        target_web = coordinator_web_url(target)
    sentence = auth.build_refusal() if work else auth.refusal(primary)
    return refuse(403, sentence, leader=auth.leader_name, coordinator=target, coordinator_web=target_web,
                  leader_web=target_web)


def primary_name() -> str | None:
    """This coordinator's primary: itself, or a backup's configured/registered primary."""
    cfg = current_app.config
    if cfg.get("BATON_PRIMARY"):
        return cfg["BATON_PRIMARY"]
    raw, _ = etcd_access.client().get(etcd_access.keys().coordinator(cfg["BATON_NAME"]))
    record = CoordinatorRecord.parse(raw, cfg["BATON_NAME"])
    return record.primary if record else None


def writable_required(view: Callable) -> Callable:
    """403 unless this coordinator is a primary that leads right now; sets g.fence for the commit."""
    return _fenced(view, work=False)


def serving_required(view: Callable) -> Callable:
    """403 unless this coordinator serves agents right now (either role: builds are work,
    not changes, docs/design.md section 1); sets g.fence for the commit."""
    return _fenced(view, work=True)


def may_write(auth: Authority, work: bool) -> bool:
    return auth.accepts_builds if work else auth.writable


def _fenced(view: Callable, work: bool) -> Callable:
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        auth = authority()
        if not may_write(auth, work):
            return read_only_refusal(auth, work)
        g.fence = write_fence(etcd_access.client(), etcd_access.keys(), auth)
        g.work = work
        return view(*args, **kwargs)
    return wrapped
