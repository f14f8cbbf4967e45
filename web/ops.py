"""Endpoints for machines: load balancers (/leader, /backup), supervisors (/livez, /readyz,
/healthz), Prometheus (/metrics).

No login: they reveal nothing beyond roles and counters.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from cluster.daemon_state import read_state
from lease.errors import EtcdError
from web import etcd_access
from web.cluster_view import Snapshot
from web.guards import authority, snapshot
from web.metrics import exposition

bp = Blueprint("ops", __name__)


@bp.get("/leader")
def leader():
    """200 only on the coordinator that leads now (like Patroni's /primary), else 503."""
    try:
        auth = authority()
    except EtcdError as exc:
        return jsonify({"leader": False, "reason": f"etcd unavailable: {exc}"}), 503
    body = {"leader": auth.leads, "name": auth.name, "current_leader": auth.leader_name, "epoch": auth.epoch}
    return jsonify(body), (200 if auth.leads else 503)


@bp.get("/backup")
def backup():
    """200 only on the selected backup (the one that takes over), else 503: for load
    balancers and monitors that watch the standby."""
    try:
        snap = snapshot()
    except EtcdError as exc:
        return jsonify({"backup": False, "reason": f"etcd unavailable: {exc}"}), 503
    name = current_app.config["BATON_NAME"]
    selected = snap.settings.selected_backup
    body = {"backup": selected == name, "name": name, "selected_backup": selected}
    return jsonify(body), (200 if selected == name else 503)


@bp.get("/livez")
def livez():
    """Liveness, for a supervisor that restarts what is stuck: 200 while this coordinator's
    HA loop keeps turning (its state file is younger than BATON_LIVENESS_MAX_AGE). It does not
    ask etcd: during an etcd outage every coordinator is alive and waiting, and restarting
    them all would help nothing."""
    cfg = current_app.config
    max_age = cfg["BATON_LIVENESS_MAX_AGE"]
    if read_state(cfg.get("BATON_DAEMON_STATE"), max_age=max_age) is None:
        return jsonify({"ok": False, "reason": f"the HA loop has not reported for {max_age:g} s"}), 503
    return jsonify({"ok": True})


@bp.get("/readyz")
@bp.get("/healthz")
def readyz():
    """Readiness: 200 when etcd answers and our daemon's state file is fresh (within
    renew_deadline); else 503 with the reason. /healthz is the same check. The body
    also counts the leader writes etcd refused (store_write_errors, see the daemon's
    log): a coordinator that cannot write a key is still ready, but never silently."""
    cfg = current_app.config
    try:
        etcd_access.client().revision(etcd_access.keys().leader)  # readable with the coordinator's role
    except EtcdError as exc:
        return jsonify({"ok": False, "reason": f"etcd does not answer: {exc}"}), 503
    path = cfg.get("BATON_DAEMON_STATE")
    state = read_state(path, max_age=cfg["BATON_RENEW_DEADLINE"])
    if state is None:
        reason = ("no daemon state file configured" if not path else
                  f"the daemon state file {path} is missing or older than {cfg['BATON_RENEW_DEADLINE']} s")
        return jsonify({"ok": False, "reason": reason}), 503
    return jsonify({"ok": True, "store_write_errors": state.get("store_write_errors", 0)})


@bp.get("/metrics")
def metrics():
    cfg = current_app.config
    path = cfg.get("BATON_DAEMON_STATE")

    def state(fresh_only: bool) -> dict | None:
        return read_state(path, max_age=cfg["BATON_RENEW_DEADLINE"] if fresh_only else float("inf"))

    def cluster() -> Snapshot | None:
        try:
            return snapshot()
        except EtcdError:
            return None  # the daemon's own figures are still worth scraping

    return Response(exposition(cfg["BATON_NAME"], state, cluster), mimetype=CONTENT_TYPE_LATEST)
