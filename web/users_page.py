"""Users: list and add (admin)."""
from __future__ import annotations

from flask import Blueprint, render_template, request, url_for

from cluster import users as user_store
from lease.election import Fence
from web import actions, etcd_access, forms
from web.guards import admin_required

bp = Blueprint("users", __name__)


@bp.get("/users")
@admin_required
def index():
    users = user_store.list_users(etcd_access.client(), etcd_access.keys())
    return render_template("users.html", users=users, page="users")


@bp.post("/users")
@admin_required
def add():
    body = {k: request.form.get(k) for k in ("name", "role", "password")}

    def act(fence: Fence) -> str:
        user = actions.create_user(etcd_access.client(), etcd_access.keys(), fence, body)
        return f"User {user['name']} ({user['role']}) added."

    return forms.run(act, url_for("users.index"))
