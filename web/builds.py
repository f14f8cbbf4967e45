"""Builds: list with progress, one build's tasks, submitting a build file, cancelling a build.

Submitting and cancelling are work, not changes: the coordinator serving
agents accepts them whatever its role (forms.run(work=True), web/authority.py).
"""
from __future__ import annotations

from flask import Blueprint, abort, current_app, g, render_template, request, url_for

from lease.election import Fence
from web import actions, etcd_access, forms
from web.cluster_view import build_detail, build_rows
from web.guards import admin_required, login_required, snapshot
from web.security import now

bp = Blueprint("builds", __name__)


@bp.get("/builds")
@login_required
def index():
    rows = build_rows(etcd_access.client(), etcd_access.keys(), snapshot(),
                      current_app.extensions["baton_spec_cache"])
    return render_template("builds.html", builds=rows, page="builds")


# A page shows at most this many tasks (a build may have 10,000); "Show all" lifts it.
TASKS_PER_PAGE = 500
TASK_STATES = ("running", "failed", "queued", "done")


@bp.get("/builds/<build_id>")
@login_required
def show(build_id):
    state = request.args.get("state") if request.args.get("state") in TASK_STATES else None
    show_all = request.args.get("all") == "1"
    limit = None if show_all else TASKS_PER_PAGE
    detail = build_detail(etcd_access.client(), etcd_access.keys(), build_id, {state} if state else None, limit)
    if detail is None:
        abort(404)
    if detail.get("kind") == "run":   # the build monitor (web/static/monitor.js)
        return render_template("run_build.html", build=detail, page="run")
    return render_template("build.html", build=detail, page="builds", state=state, show_all=show_all,
                           limit=limit, task_states=TASK_STATES)


@bp.post("/builds")
@admin_required
def submit():
    upload = request.files.get("file")
    body = upload.read() if upload and upload.filename else request.form.get("buildfile", "").encode()
    created: list[str] = []

    def act(fence: Fence) -> str:
        build_id = actions.submit_build(etcd_access.client(), etcd_access.keys(), fence, body,
                                        g.user["name"], now())
        created.append(build_id)
        return f"Build {build_id} submitted."

    response = forms.run(act, url_for("builds.index"), work=True)
    if created and response.status_code == 302:
        response.headers["Location"] = url_for("builds.show", build_id=created[0])
    return response


@bp.post("/builds/<build_id>/cancel")
@admin_required
def cancel(build_id):
    def act(fence: Fence) -> str:
        try:
            asked = actions.cancel_build(etcd_access.client(), etcd_access.keys(), fence, build_id,
                                         g.user["name"], now())
        except actions.Ended as exc:
            raise actions.Invalid(str(exc)) from None   # flashed on the page it came from
        return f"Build {build_id}: cancelling." if asked else f"Build {build_id} is already being cancelled."

    back = request.form.get("back") == "list"
    return forms.run(act, url_for("builds.index") if back else url_for("builds.show", build_id=build_id),
                     work=True)
