"""The JSON API (/api/v1), docs/design.md section 5. HTTP Basic or the UI session.

Reads work on every coordinator. Builds and their cancellation are work,
accepted by the coordinator that serves agents whatever its role; every
other write only by the primary that leads (403 naming the coordinator to
use otherwise: web/authority.py). POST /switchover is accepted by the
leading coordinator of either role.
"""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from cluster import users as user_store
from cluster.untrusted import load_json

from web import actions, etcd_access
from web.authority import write_fence
from web.cluster_view import build_detail, build_rows, read_events
from web.guards import (admin_required, authority, login_required, primary_name, read_only_refusal, refuse,
                        serving_required, snapshot, writable_required)
from web.security import now
from web.status import status_document

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def json_body():
    """The request's JSON object, or raise Invalid with a sentence (NaN, Infinity and
    numbers of more than 100 digits are refused as well: see cluster.untrusted)."""
    raw = request.get_data(cache=True)
    try:
        return load_json(raw or b"null")
    except ValueError as exc:
        raise actions.Invalid(f"the request body is not valid JSON: {exc}") from None


@bp.get("/status")
@login_required
def status():
    snap = snapshot()
    with_agents = request.args.get("agents") != "none"
    return jsonify(status_document(snap, authority(), primary_name(), with_agents=with_agents))


@bp.get("/events")
@login_required
def events():
    limit = min(max(request.args.get("limit", 50, type=int) or 50, 1), 1000)
    return jsonify({"events": [e.to_dict() for e in read_events(etcd_access.client(), etcd_access.keys(), limit)]})


@bp.put("/settings")
@admin_required
@writable_required
def put_settings():
    updated = actions.update_settings(etcd_access.client(), etcd_access.keys(), g.fence, json_body(),
                                      current_app.config["BATON_NAME"])
    return jsonify({"settings": updated.to_dict()})


@bp.get("/settings")
@login_required
def get_settings():
    return jsonify({"settings": snapshot().settings.to_dict()})


@bp.get("/builds")
@login_required
def list_builds():
    rows = build_rows(etcd_access.client(), etcd_access.keys(), snapshot(),
                      current_app.extensions["baton_spec_cache"])
    return jsonify({"builds": rows})


@bp.post("/builds")
@admin_required
@serving_required
def submit_build():
    body = request.get_data(cache=True)
    build_id = actions.submit_build(etcd_access.client(), etcd_access.keys(), g.fence, body,
                                    g.user["name"], now())
    return jsonify({"id": build_id}), 201


def task_filter() -> tuple[set[str] | None, int | None, int]:
    """?state=running,failed&limit=N&offset=M (all tasks when absent)."""
    states = {s for s in request.args.get("state", "").split(",") if s} or None
    limit = request.args.get("limit", type=int)
    offset = max(request.args.get("offset", 0, type=int) or 0, 0)
    if limit is not None and limit < 0:
        raise actions.Invalid("limit must be >= 0")
    return states, limit, offset


@bp.get("/builds/<build_id>")
@login_required
def show_build(build_id):
    states, limit, offset = task_filter()
    since = max(request.args.get("since", 0, type=int) or 0, 0)   # a run build's jobs after this seq
    detail = build_detail(etcd_access.client(), etcd_access.keys(), build_id, states, limit, offset, since)
    if detail is None:
        return refuse(404, f"no build {build_id}")
    return jsonify(detail)


@bp.post("/builds/<build_id>/cancel")
@admin_required
@serving_required
def cancel_build(build_id):
    asked = actions.cancel_build(etcd_access.client(), etcd_access.keys(), g.fence, build_id,
                                 g.user["name"], now())
    return jsonify({"id": build_id, "cancel": "requested" if asked else "already requested"}), 202


@bp.get("/users")
@admin_required
def list_users():
    return jsonify({"users": [{"name": u["name"], "role": u.get("role")} for u in
                              user_store.list_users(etcd_access.client(), etcd_access.keys())]})


@bp.post("/users")
@admin_required
@writable_required
def add_user():
    user = actions.create_user(etcd_access.client(), etcd_access.keys(), g.fence, json_body())
    return jsonify(user), 201


@bp.put("/users/<name>/password")
@login_required
def put_password(name):
    # An admin sets anyone's password; a viewer only their own.
    if g.user.get("role") != "admin" and g.user["name"] != name:
        return refuse(403, f"{g.user['name']} is a viewer; only an admin may change another user's password.")
    return _put_password(name)


@writable_required
def _put_password(name):
    actions.change_password(etcd_access.client(), etcd_access.keys(), g.fence, name, json_body())
    return jsonify({"name": name})


@bp.delete("/users/<name>")
@admin_required
@writable_required
def delete_user(name):
    actions.remove_user(etcd_access.client(), etcd_access.keys(), g.fence, name)
    return jsonify({"name": name, "deleted": True})


@bp.post("/agents/<name>")
@admin_required
@writable_required
def configure_agent(name):
    config = actions.set_agent_config(etcd_access.client(), etcd_access.keys(), g.fence, name, json_body())
    return jsonify({"name": name, **config})


@bp.post("/switchover")
@admin_required
def switchover():
    auth = authority()
    if not auth.leads:
        return read_only_refusal(auth)
    body = json_body() if request.get_data(cache=True).strip() else {}
    if not isinstance(body, dict):
        raise actions.Invalid("send a JSON object, optionally with target")
    snap = snapshot()
    fence = write_fence(etcd_access.client(), etcd_access.keys(), auth)
    target = actions.request_switchover(etcd_access.client(), etcd_access.keys(), fence,
                                        current_app.config["BATON_NAME"], primary_name(),
                                        snap.settings.selected_backup, body.get("target"))
    return jsonify({"target": target}), 202

