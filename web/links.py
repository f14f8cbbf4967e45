"""Links to coordinators' web UIs, from their registration in etcd."""
from __future__ import annotations

from flask import current_app, g

from cluster.records import CoordinatorRecord
from web import etcd_access


def as_url(address: str | None) -> str | None:
    """"host:port" -> "https://host:port/" (the scheme this coordinator serves); URLs stay."""
    if not address:
        return None
    if "://" in address:
        return address.rstrip("/") + "/"
    scheme = "https" if current_app.config["BATON_HTTPS"] else "http"
    return f"{scheme}://{address}/"


def coordinator_web_url(name: str | None, known: str | None = None) -> str | None:
    """The web URL of coordinator `name` (from `known`, the request's snapshot, or etcd)."""
    if not name:
        return None
    if known:
        return as_url(known)
    snap = g.get("snapshot")
    if snap is not None and name in snap.coordinators:
        return as_url(snap.coordinators[name].web)
    raw, _ = etcd_access.client().get(etcd_access.keys().coordinator(name))
    record = CoordinatorRecord.parse(raw, name)
    return as_url(record.web if record else None)
