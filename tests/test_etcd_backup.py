"""Backing up and restoring a cluster's etcd, as deploy/README.md ("Backup and
restore") tells operators to: `etcdctl snapshot save` from a running member,
then, after the data is lost, `etcdutl snapshot restore` into a new data
directory and an etcd started from it. Real etcd, real tools; the builds and
users are written and read back by Baton's own code."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from cluster import users
from cluster.keys import Keys, decode
from lease.client import EtcdConfig, connect
from lease.election import Fence
from tests.harness.etcd import EtcdMember, etcd_tool
from web.actions import submit_build

BUILD = "name: hello\ntasks:\n  - id: compile\n    cmd: cc -c hello.c\n  - id: link\n    cmd: cc hello.o\n    deps: [compile]\n"


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout}{done.stderr}"
    return done.stdout


def test_snapshot_save_and_restore_bring_back_builds_and_users(tmp_path):
    try:
        etcdctl, etcdutl = etcd_tool("etcdctl"), etcd_tool("etcdutl")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    keys = Keys("default")
    member = EtcdMember(name="etcd1", data_dir=tmp_path / "data").start()
    try:
        member.wait_ready()
        etcd = connect(EtcdConfig.from_urls(member.client_url, timeout=5.0))
        try:
            etcd.put(keys.leader, b'{"name": "p1"}')
            fence = Fence(etcd, keys.leader, etcd.get(keys.leader)[1].create_revision)
            assert users.ensure_admin(etcd, keys, fence, password="admin-before-loss") == "admin-before-loss"
            users.add_user(etcd, keys, "erin", "viewer", "erin-password", fence)
            build_id = submit_build(etcd, keys, fence, BUILD, user="admin", now=1_700_000_000.0)
        finally:
            etcd.close()

        # Backup: one command against a running member (deploy/README.md).
        snapshot = tmp_path / "baton-etcd.db"
        _run(etcdctl, "--endpoints", member.client_url, "snapshot", "save", str(snapshot))
        assert "totalKey" in _run(etcdutl, "snapshot", "status", str(snapshot), "-w", "json")
    finally:
        member.stop()

    # The data is lost.
    shutil.rmtree(tmp_path / "data")

    # Restore into a new data directory and start etcd from it (etcdutl: etcdctl's
    # `snapshot restore` is deprecated in 3.5).
    restored = EtcdMember(name="etcd1", data_dir=tmp_path / "restored")
    _run(etcdutl, "snapshot", "restore", str(snapshot), "--data-dir", str(restored.data_dir),
         "--name", restored.name, "--initial-cluster", f"{restored.name}={restored.peer_url}",
         "--initial-advertise-peer-urls", restored.peer_url, "--initial-cluster-token", "baton-restored")
    restored.start()
    try:
        restored.wait_ready()
        etcd = connect(EtcdConfig.from_urls(restored.client_url, timeout=5.0))
        try:
            assert users.list_users(etcd, keys) == [{"name": "admin", "role": "admin"},
                                                     {"name": "erin", "role": "viewer"}]
            assert users.verify_password("admin-before-loss", users.get_user(etcd, keys, "admin"))
            assert users.get_user(etcd, keys, "erin")["role"] == "viewer"
            build = decode(etcd.get(keys.build(build_id))[0])
            assert build["name"] == "hello" and [t["id"] for t in build["tasks"]] == ["compile", "link"]
            assert decode(etcd.get(keys.status_of_build(build_id))[0])["state"] == "queued"
        finally:
            etcd.close()
    finally:
        restored.stop()
