"""`baton up`'s directory keeps the admin password (0600) and refuses, in one
sentence and before starting anything, a password that cannot log in."""
from __future__ import annotations

import pytest

from cli.local import LocalCluster
from lease.errors import ConfigError


@pytest.fixture(autouse=True)
def no_password_in_env(monkeypatch):
    monkeypatch.delenv("BATON_ADMIN_PASSWORD", raising=False)


def test_the_kept_password_is_used_again(tmp_path):
    (tmp_path / "admin-password").write_text("kept-one\n")
    (tmp_path / "agent-token").write_text("token-1")
    cluster = LocalCluster(tmp_path)
    assert cluster.admin_password == "kept-one" and cluster.agent_token == "token-1"


def test_another_password_than_the_kept_one_is_refused(tmp_path):
    (tmp_path / "admin-password").write_text("kept-one")
    cluster = LocalCluster(tmp_path, admin_password="another", tls=False)
    try:
        with pytest.raises(ConfigError, match="another admin password"):
            cluster.start(wait=False)
        assert cluster.etcd_proc is None and not cluster.coordinators
    finally:
        cluster.stop()


def test_a_cluster_without_a_kept_password_is_refused(tmp_path):
    (tmp_path / "etcd").mkdir()
    cluster = LocalCluster(tmp_path, tls=False)
    try:
        with pytest.raises(ConfigError, match="admin password is not kept"):
            cluster.start(wait=False)
        assert cluster.etcd_proc is None and not cluster.coordinators
    finally:
        cluster.stop()
