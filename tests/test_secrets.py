"""Secrets from the environment: the *_FILE forms (compose secrets) and the
refusal of placeholders copied from an example file."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster.names import is_placeholder, read_token
from cluster.users import UserError, admin_password_from_env, validate_password
from lease.errors import ConfigError


@pytest.mark.parametrize("value", ["change-me", "changeme", "CHANGE_ME", "Change Me!", "password", "admin",
                                   "secret", "change-me-to-a-long-random-token", "Passw0rd"])
def test_placeholders_are_known(value):
    assert is_placeholder(value)


@pytest.mark.parametrize("value", ["correct horse battery", "pw-for-tests", "admin-2024-Xq9!", "s3cret-sauce"])
def test_real_secrets_are_not_placeholders(value):
    assert not is_placeholder(value)


def test_a_placeholder_admin_password_is_refused():
    with pytest.raises(UserError, match="placeholder"):
        validate_password("change-me")
    assert validate_password("a-real-password") == "a-real-password"


def test_admin_password_from_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("BATON_ADMIN_PASSWORD", raising=False)
    path = tmp_path / "admin_password"
    path.write_text("from-the-file\n")
    monkeypatch.setenv("BATON_ADMIN_PASSWORD_FILE", str(path))
    assert admin_password_from_env() == "from-the-file"
    monkeypatch.setenv("BATON_ADMIN_PASSWORD", "from-the-env")
    with pytest.raises(ConfigError, match="not both"):
        admin_password_from_env()
    monkeypatch.delenv("BATON_ADMIN_PASSWORD")
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        admin_password_from_env()
    monkeypatch.setenv("BATON_ADMIN_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the admin password file"):
        admin_password_from_env()


def test_agent_token_from_a_file_and_placeholders_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("BATON_AGENT_TOKEN", raising=False)
    path = tmp_path / "agent_token"
    path.write_text("tok-from-a-file-0123456789\n")
    monkeypatch.setenv("BATON_AGENT_TOKEN_FILE", str(path))
    assert read_token(None) == "tok-from-a-file-0123456789"
    monkeypatch.delenv("BATON_AGENT_TOKEN_FILE")
    monkeypatch.setenv("BATON_AGENT_TOKEN", "change-me-to-a-long-random-token")
    with pytest.raises(ConfigError, match="placeholder"):
        read_token(None)


@pytest.mark.parametrize("env", [{"BATON_ADMIN_PASSWORD": "change-me"}, {"BATON_ADMIN_PASSWORD_FILE": "FILE"}])
def test_the_coordinator_refuses_a_placeholder_at_start_in_one_sentence(tmp_path, env):
    """What deploy/baton.env.example holds until someone edits it: refused before
    the coordinator reaches etcd (none runs here), exit 2, no traceback."""
    (tmp_path / "pw").write_text("change-me\n")
    env = {k: str(tmp_path / "pw") if v == "FILE" else v for k, v in env.items()}
    base = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    done = subprocess.run([sys.executable, "-m", "cli", "coordinator", "--name", "p1", "--role", "primary",
                           "--etcd", "http://127.0.0.1:9", "--no-web", "--state-dir", str(tmp_path / "s")],
                          env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "placeholder" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
