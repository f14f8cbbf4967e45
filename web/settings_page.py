"""Settings › General: the Backup choice and the other settings, saved by one "Save All"."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request, url_for

from cluster.untrusted import quote
from lease.election import Fence
from web import actions, etcd_access, forms
from web.cluster_view import backups_of
from web.guards import admin_required, login_required, primary_name, snapshot

bp = Blueprint("settings", __name__)


@bp.get("/settings")
@login_required
def index():
    snap = snapshot()
    primary = primary_name() or current_app.config["BATON_NAME"]
    choices = backups_of(snap, primary)
    selected = snap.settings.selected_backup
    if selected and selected not in choices:
        choices.append(selected)  # shown (as not running) so Save All keeps it
    return render_template("settings.html", settings=snap.settings, backups=choices,
                           registered=set(backups_of(snap, primary)), page="settings")


def _number(field: str, kind=float):
    raw = request.form.get(field, "").strip()
    try:
        return kind(raw)
    except ValueError:
        raise actions.Invalid(f"{field.replace('_', ' ')} must be a number, got {quote(raw)}") from None


@bp.post("/settings")
@admin_required
def save_all():
    def act(fence: Fence) -> str:
        changes = {
            "selected_backup": request.form.get("selected_backup") or None,
            "auto_subscribe": request.form.get("auto_subscribe") == "on",
            "crash_detection": request.form.get("crash_detection") == "on",
            "max_cores_per_build": _number("max_cores_per_build", int),
            "deselect_after": _number("deselect_after") * 60,  # the form speaks minutes
            # Empty: each backup uses its own --failback-delay.
            "failback_delay": _number("failback_delay") if request.form.get("failback_delay", "").strip() else None,
        }
        actions.update_settings(etcd_access.client(), etcd_access.keys(), fence, changes,
                                current_app.config["BATON_NAME"])
        return "Settings saved."

    return forms.run(act, url_for("settings.index"))
