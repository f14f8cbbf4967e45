"""One etcd client per worker process, created on first use.

gRPC channels do not survive fork(): gunicorn imports the app in the
master and forks workers, so the client must never be created at import
time. `client(app)` creates it lazily and creates a fresh one if it finds
itself in a different process than the one that made the cached client.
"""
from __future__ import annotations

import os
import threading

from flask import Flask, current_app

from cluster.keys import Keys
from lease.client import EtcdConfig, connect

_lock = threading.Lock()


def init_app(app: Flask) -> None:
    app.extensions["baton_keys"] = Keys(app.config["BATON_CLUSTER"])
    app.extensions["baton_etcd"] = None  # (pid, Etcd)


def client(app: Flask | None = None):
    """This process's lease.client.Etcd for the app's cluster."""
    app = app or current_app
    cached = app.extensions.get("baton_etcd")
    pid = os.getpid()
    if cached and cached[0] == pid:
        return cached[1]
    with _lock:
        cached = app.extensions.get("baton_etcd")
        if cached and cached[0] == pid:
            return cached[1]
        cfg = app.config
        etcd_config = EtcdConfig.from_urls(
            cfg["BATON_ETCD"], timeout=float(cfg.get("BATON_ETCD_TIMEOUT", 2.0)),
            ca_cert=cfg.get("BATON_ETCD_CA"), cert=cfg.get("BATON_ETCD_CERT"),
            key=cfg.get("BATON_ETCD_KEY"))
        etcd = connect(etcd_config)
        app.extensions["baton_etcd"] = (pid, etcd)
        return etcd


def keys(app: Flask | None = None) -> Keys:
    return (app or current_app).extensions["baton_keys"]


def close(app: Flask) -> None:
    cached = app.extensions.get("baton_etcd")
    if cached and cached[0] == os.getpid():
        cached[1].close()
    app.extensions["baton_etcd"] = None
