"""Endpoints for machines: load balancers (/leader), supervisors (/healthz), Prometheus (/metrics).

No login: they reveal nothing beyond roles and counters.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from cluster.daemon_state import read_state
from lease.errors import EtcdError
from web import etcd_access
from web.guards import authority

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


@bp.get("/healthz")
def healthz():
    """200 when etcd answers and our daemon's state file is fresh; else 503 with the reason."""
    cfg = current_app.config
    try:
        etcd_access.client().revision()
    except EtcdError as exc:
        return jsonify({"ok": False, "reason": f"etcd does not answer: {exc}"}), 503
    path = cfg.get("BATON_DAEMON_STATE")
    if read_state(path, max_age=cfg["BATON_RENEW_DEADLINE"]) is None:
        reason = ("no daemon state file configured" if not path else
                  f"the daemon state file {path} is missing or older than {cfg['BATON_RENEW_DEADLINE']} s")
        return jsonify({"ok": False, "reason": reason}), 503
    return jsonify({"ok": True})


_METRICS = (
    ("baton_is_leader", "gauge", "1 when this coordinator acts as leader", None),
    ("baton_epoch", "gauge", "epoch (leader key create revision) this coordinator last acted with", "epoch"),
    ("baton_failovers_total", "counter", "takeovers by this coordinator", "failovers"),
    ("baton_agents_connected", "gauge", "agents with a stream to this coordinator", "agents_connected"),
    ("baton_tasks_dispatched_total", "counter", "tasks this coordinator dispatched", "tasks_dispatched"),
    ("baton_lease_renewal_latency_seconds", "gauge", "duration of the last lease renewal",
     "lease_renewal_latency"),
)


@bp.get("/metrics")
def metrics():
    cfg = current_app.config
    path = cfg.get("BATON_DAEMON_STATE")
    fresh = read_state(path, max_age=cfg["BATON_RENEW_DEADLINE"])
    # Counters stay meaningful from an old file; "is leader" only from a fresh one.
    last = read_state(path, max_age=float("inf")) or {}
    lines = []
    for name, kind, help_text, field in _METRICS:
        if field is None:
            value = 1 if fresh and fresh.get("acting") else 0
        else:
            value = last.get(field)
            if value is None:
                value = 0
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {float(value):g}"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
