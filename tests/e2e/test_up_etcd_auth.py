"""`baton up --no-tls` leaves etcd closed (docs/etcd-auth.md, "baton up"): the
flag turns TLS off on the links a user sees (the web UIs, the agents' gRPC),
while etcd, which holds the admin's password hash and the leader key, keeps
requiring client certificates with etcd auth on. The real command, run as a
user runs it; the context it writes is what the CLI uses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.keys import Keys
from lease.client import EtcdConfig, connect
from lease.errors import EtcdAuthError, EtcdError
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _read_leader(urls: str, **tls) -> bytes | None:
    etcd = connect(EtcdConfig.from_urls(urls, timeout=3.0, **tls))
    try:
        return etcd.get(Keys("default").leader)[0]
    finally:
        etcd.close()


def _refused(urls: str, **tls) -> bool:
    try:
        _read_leader(urls, **tls)
    except EtcdError:
        return True
    return False


def test_baton_up_no_tls_keeps_etcd_closed_to_anonymous_clients(tmp_path):
    directory = tmp_path / "cluster"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BATON_CONTEXT", None)
    up = subprocess.Popen([sys.executable, "-m", "cli", "up", "--no-tls", "--dir", str(directory),
                           "--agents", "0", "--backups", "0"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        context = directory / "context.json"
        wait_until(context.exists, timeout=60, interval=0.1, message="baton up writes its context")
        ctx = json.loads(context.read_text())
        assert "ca" not in ctx, "--no-tls: the web UIs are plain HTTP"
        identity = {"ca_cert": ctx.get("etcd_ca"), "cert": ctx.get("etcd_cert"), "key": ctx.get("etcd_key")}
        assert ctx["etcd"].startswith("https://") and all(identity.values()), ctx
        # The CLI's own identity reads the status path (the leader key) ...
        wait_until(lambda: _read_leader(ctx["etcd"], **identity), timeout=60, interval=0.2,
                   message="the CLI's identity reads p1's leader key")
        # ... and nothing else; nobody without a certificate gets in at all.
        etcd = connect(EtcdConfig.from_urls(ctx["etcd"], timeout=3.0, **identity))
        try:
            with pytest.raises(EtcdAuthError):
                etcd.put(Keys("default").leader, b"{}")
        finally:
            etcd.close()
        assert _refused(ctx["etcd"], ca_cert=ctx["etcd_ca"])
        assert _refused(ctx["etcd"].replace("https://", "http://"))
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
