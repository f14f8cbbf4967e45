"""Login and logout for the UI (the API uses HTTP Basic instead)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, url_for

from web.security import check_password, client_address, end_session, start_session, throttle

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a fresh login to another host."""
    if not target:
        return url_for("overview.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("overview.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    status = 200
    if request.args.get("expired"):
        error = "Your session ended after a period of inactivity; please log in again."
    if request.method == "POST":
        name = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        address = client_address()
        locked = throttle().seconds_locked(name, address)
        if locked > 0:
            error, status = f"Too many failed logins; try again in {int(locked) + 1} seconds.", 429
        elif name and (record := check_password(name, password)) is not None:
            throttle().succeeded(name, address)
            start_session(name, record)
            return redirect(_safe_next(request.form.get("next")))
        else:
            throttle().failed(name, address)
            error, status = "Wrong user name or password.", 401
    return render_template("login.html", error=error, next=request.values.get("next", "")), status


@bp.post("/logout")
def logout():
    end_session()
    return redirect(url_for("auth.login"))
