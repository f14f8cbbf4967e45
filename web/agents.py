"""Agents: state, cores, current builds, the coordinator each is connected to; admin actions."""
from __future__ import annotations

from flask import Blueprint, g, render_template, request, url_for

from lease.election import Fence
from web import actions, etcd_access, forms
from web.agent_table import agent_rows_html
from web.cluster_view import agent_rows
from web.guards import admin_required, authority, login_required, snapshot
from web.security import csrf_token

bp = Blueprint("agents", __name__)

# form action -> the agent-config change it makes
CHANGES = {
    "enable": {"disabled": False}, "disable": {"disabled": True},
    "subscribe": {"subscribed": True}, "unsubscribe": {"subscribed": False},
}


@bp.get("/agents")
@login_required
def index():
    snap = snapshot()
    rows = agent_rows(snap)
    admin = g.user.get("role") == "admin"
    html = agent_rows_html(rows, admin=admin, writable=authority().writable,
                           auto_subscribe=snap.settings.auto_subscribe,
                           csrf_token=csrf_token() if admin else "", base_url=url_for("agents.index"))
    return render_template("agents.html", agents=rows, rows_html=html, auto_subscribe=snap.settings.auto_subscribe,
                           page="agents")


@bp.post("/agents/<name>")
@admin_required
def change(name):
    what = request.form.get("action", "")

    def act(fence: Fence) -> str:
        if what not in CHANGES:
            raise actions.Invalid(f"unknown agent action {what!r}")
        actions.set_agent_config(etcd_access.client(), etcd_access.keys(), fence, name, CHANGES[what])
        return f"Agent {name}: {what}d."

    return forms.run(act, url_for("agents.index"))
