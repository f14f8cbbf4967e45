"""Agents: state, cores, current builds, the coordinator each is connected to; admin actions."""
from __future__ import annotations

from flask import Blueprint, render_template, request, url_for

from web import actions, etcd_access, forms
from web.cluster_view import agent_rows
from web.guards import admin_required, login_required, snapshot

bp = Blueprint("agents", __name__)

# form action -> the agent-config change it makes
CHANGES = {
    "enable": {"disabled": False}, "disable": {"disabled": True},
    "subscribe": {"subscribed": True}, "unsubscribe": {"subscribed": False},
}


@bp.get("/agents")
@login_required
def index():
    rows = agent_rows(snapshot())
    return render_template("agents.html", agents=rows, page="agents")


@bp.post("/agents/<name>")
@admin_required
def change(name):
    what = request.form.get("action", "")

    def act(epoch: int) -> str:
        if what not in CHANGES:
            raise actions.Invalid(f"unknown agent action {what!r}")
        actions.set_agent_config(etcd_access.client(), etcd_access.keys(), epoch, name, CHANGES[what],
                                 snapshot().settings.auto_subscribe)
        return f"Agent {name}: {what}d."

    return forms.run(act, url_for("agents.index"))
