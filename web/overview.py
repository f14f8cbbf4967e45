"""Overview: coordinators, who leads, epoch, lease time left, selected backup, recent events."""
from __future__ import annotations

from flask import Blueprint, render_template

from web.guards import authority, login_required, primary_name, snapshot
from web.status import status_document

bp = Blueprint("overview", __name__)


@bp.get("/")
@login_required
def index():
    doc = status_document(snapshot(), authority(), primary_name(), with_agents=False)
    return render_template("overview.html", status=doc, page="overview")
