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


def test_a_directory_from_before_keeps_its_ca_but_moves_the_key_out_of_what_processes_get(tmp_path):
    from cli import certs

    old = certs.make_ca(tmp_path / "certs")  # the layout before <dir>/ca existed
    cluster = LocalCluster(tmp_path)
    cluster._issue_certs()
    assert not (tmp_path / "certs" / "ca-key.pem").exists()
    assert certs.load_ca(tmp_path / "ca").cert == old.cert, "same CA: certificates issued before still verify"
    assert (tmp_path / "certs" / "ca.pem").read_bytes() == (tmp_path / "ca" / "ca.pem").read_bytes()
    assert {(p.name, oct(p.stat().st_mode & 0o777)) for p in (tmp_path / "ca", tmp_path / "certs")} == \
        {("ca", "0o700"), ("certs", "0o700")}
