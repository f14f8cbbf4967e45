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


def kept_password(tmp_path):
    (tmp_path / "admin-password").write_text("kept-one")
    return {"admin_password": "another"}


def etcd_data_without_a_kept_password(tmp_path):
    (tmp_path / "etcd").mkdir()
    return {}


@pytest.mark.parametrize("prepare, words", [(kept_password, "another admin password"),
                                            (etcd_data_without_a_kept_password, "admin password is not kept")])
def test_a_password_that_cannot_log_in_is_refused_before_anything_starts(tmp_path, prepare, words):
    cluster = LocalCluster(tmp_path, tls=False, **prepare(tmp_path))
    try:
        with pytest.raises(ConfigError, match=words):
            cluster.start(wait=False)
        assert cluster.etcd_proc is None and not cluster.coordinators
    finally:
        cluster.stop()
