"""The status document (GET /api/v1/status) and the view-only banner, from one snapshot."""
from __future__ import annotations

from flask import current_app

from lease.errors import EtcdError
from web import etcd_access
from web.authority import Authority
from web.cluster_view import Snapshot, agent_rows, build_counts, coordinator_rows
from web.links import as_url, coordinator_web_url


def lease_ttl_left(auth: Authority) -> float | None:
    """Seconds before the leader's lease could expire: our daemon's own figure when we
    lead, else etcd's view of the leader's lease (None when nobody leads)."""
    if auth.leads and auth.state and auth.state.get("lease_ttl_left") is not None:
        return float(auth.state["lease_ttl_left"])
    if not auth.leader_lease:
        return None
    try:
        ttl = etcd_access.client().lease_ttl(auth.leader_lease)
    except EtcdError:
        return None
    return float(ttl) if ttl >= 0 else None


def banner(auth: Authority, snap: Snapshot, primary: str | None) -> dict | None:
    """What the banner says where this coordinator does not take every write (None on
    the leading primary): which writes it takes (builds and cancellations where it
    serves agents, docs/design.md section 1) and where the others go."""
    me = auth.name
    leader = auth.leader_name
    if auth.role == "backup":
        if leader == me and auth.accepts_builds:
            text = (f"This is the backup coordinator {me}, serving agents now because the primary is "
                    f"unavailable. It accepts builds and their cancellation; settings, users and agent "
                    f"configuration change only on the primary {primary or '(unknown)'}.")
        else:
            text = f"This is the backup coordinator {me} — view only."
            if leader and leader not in (me, primary):
                text += f" Builds go to {leader}, which serves agents."
        return {"text": text, "link": coordinator_web_url(primary), "link_text": f"Go to the primary {primary}"}
    if auth.writable:
        return None
    if leader and leader != me:
        return {"text": f"{leader} is serving agents — this coordinator ({me}) is view only. Builds go to "
                        f"{leader}; settings, users and agent configuration change here once {me} leads again.",
                "link": coordinator_web_url(leader, snap.leader.web if snap.leader else None),
                "link_text": f"Go to {leader}"}
    if leader == me:
        return {"text": f"{me} is not acting as leader right now (its lease is not being renewed) — view only.",
                "link": None, "link_text": None}
    return {"text": "No coordinator is serving agents right now — view only.", "link": None, "link_text": None}


def agent_summary(agents: list[dict]) -> dict[str, int]:
    """Agents per state (offline, unsubscribed, disabled, idle, busy) and cores in use/total."""
    summary = {"total": len(agents), "offline": 0, "unsubscribed": 0, "disabled": 0, "idle": 0, "busy": 0,
               "cores": 0, "cores_busy": 0}
    for a in agents:
        summary[a["state"]] = summary.get(a["state"], 0) + 1
        if a["state"] != "offline":
            summary["cores"] += a["cores"]
            summary["cores_busy"] += a["running"]
    return summary


def status_document(snap: Snapshot, auth: Authority, primary: str | None, with_agents: bool = True) -> dict:
    """The status; with_agents=False leaves out the per-agent list (the overview's polls)."""
    cfg = current_app.config
    agents = agent_rows(snap)
    leader = None
    if snap.leader:
        leader = {"name": snap.leader.name, "epoch": snap.epoch, "role": snap.leader.role or None,
                  "web": as_url(snap.leader.web)}
    return {
        "name": cfg["BATON_NAME"], "role": cfg["BATON_ROLE"], "primary": primary,
        "is_leader": auth.leads, "read_only": not auth.writable, "accepts_builds": auth.accepts_builds,
        "leader": leader, "epoch": snap.epoch, "lease_ttl_left": lease_ttl_left(auth),
        "selected_backup": snap.settings.selected_backup, "settings": snap.settings.to_dict(),
        "coordinators": coordinator_rows(snap, cfg["BATON_NAME"], cfg["BATON_ROLE"], cfg.get("BATON_PRIMARY") or None),
        "agents": agents if with_agents else None, "agent_summary": agent_summary(agents),
        "builds": build_counts(snap), "events": [e.to_dict() for e in snap.events],
        "switchover": snap.switchover, "banner": banner(auth, snap, primary),
    }
