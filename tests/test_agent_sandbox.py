"""Tasks are untrusted code (docs/design.md section 9): what the agent lets them see.

The environment is built from nothing (unit tests); real tasks run through
the Runner as `nobody` when the test runs as root (this machine does), and a
real agent process that is not root refuses another task user at start.
"""
from __future__ import annotations

import os
import pwd
import queue
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent import sandbox
from agent.runner import Runner, TaskRef
from lease.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching the task user needs root")

AGENT_ENV = {"PATH": "/opt/cc/bin:/usr/bin:/bin", "LANG": "de_DE.UTF-8",
             "BATON_ADMIN_PASSWORD": "pw", "BATON_AGENT_TOKEN": "tok", "BATON_ETCD_KEY": "/c/key.pem",
             "BATON_ETCD_CERT": "/c/cert.pem", "SSL_CERT_FILE": "/c/ca.pem", "HOME": "/root", "USER": "root"}


def test_a_task_environment_has_only_what_a_build_needs():
    env = sandbox.task_environment({"CC": "clang", "LANG": "C"}, "/w/b1", "/w/.tmp/x", "b1", "t", 2,
                                   agent_env=AGENT_ENV)
    assert env == {"PATH": "/opt/cc/bin:/usr/bin:/bin", "HOME": "/w/b1", "LANG": "C", "TMPDIR": "/w/.tmp/x",
                   "CC": "clang", "BATON_BUILD_ID": "b1", "BATON_TASK_ID": "t", "BATON_TASK_ATTEMPT": "2"}


def test_an_agent_without_path_or_lang_gives_tasks_the_defaults():
    env = sandbox.task_environment({}, "/w/b1", "/t", "b1", "t", 1, agent_env={"BATON_AGENT_TOKEN": "tok"})
    assert env["PATH"] == sandbox.DEFAULT_PATH and env["LANG"] == sandbox.DEFAULT_LANG
    assert not {k for k in env if k.startswith("BATON_")} - {"BATON_BUILD_ID", "BATON_TASK_ID", "BATON_TASK_ATTEMPT"}


def test_the_task_user_is_nobody_for_root_and_the_agent_itself_otherwise():
    assert sandbox.resolve_task_user(None, euid=0) == sandbox.TaskUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert sandbox.resolve_task_user("root", euid=0) is None  # the agent's own user: no switch
    assert sandbox.resolve_task_user(None, euid=NOBODY.pw_uid) is None
    assert sandbox.resolve_task_user("nobody", euid=NOBODY.pw_uid) is None


def test_a_task_user_that_cannot_be_had_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="needs an agent running as root") as exc:
        sandbox.resolve_task_user("root", euid=NOBODY.pw_uid)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="does not exist"):
        sandbox.resolve_task_user("no-such-user-here", euid=0)


# -- real tasks ---------------------------------------------------------------------------

@pytest.fixture
def open_dir():
    """A directory nobody can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="baton-sandbox-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_first_closed_parent_is_named(open_dir):
    user = sandbox.TaskUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    closed = open_dir / "closed"
    (closed / "work").mkdir(parents=True)
    closed.chmod(0o700)
    assert sandbox.first_closed_parent(str(closed / "work"), user) == str(closed)
    closed.chmod(0o711)  # enter, not list: enough
    assert sandbox.first_closed_parent(str(closed / "work"), user) is None


def run_one(runner: Runner, results: queue.Queue, cmd: str, env: dict | None = None, task: str = "t"):
    assert runner.start(TaskRef("b1", task, 1), cmd, env=env)
    return results.get(timeout=30)


@as_root
def test_a_task_of_a_root_agent_runs_as_nobody_with_a_clean_environment(open_dir, monkeypatch):
    monkeypatch.setenv("BATON_AGENT_TOKEN", "secret-token")
    monkeypatch.setenv("BATON_ADMIN_PASSWORD", "secret-password")
    secret = open_dir / "agent-token"
    secret.write_text("secret-token")
    secret.chmod(0o600)
    results: queue.Queue = queue.Queue()
    runner = Runner(str(open_dir / "work"), results.put, task_user=sandbox.resolve_task_user(None))
    try:
        r = run_one(runner, results, "id -un; env; touch made-here; umask", env={"CC": "clang"})
        out = r.output_tail.decode()
        assert r.exit_code == 0, out
        lines = out.splitlines()
        assert lines[0] == "nobody" and lines[-1] == "0077"
        assert "secret" not in out and "BATON_AGENT_TOKEN" not in out and "BATON_ADMIN_PASSWORD" not in out
        assert "CC=clang" in lines and f"HOME={open_dir / 'work' / 'b1'}" in lines
        tmpdir = next(line.split("=", 1)[1] for line in lines if line.startswith("TMPDIR="))
        assert tmpdir.startswith(str(open_dir / "work" / ".tmp")) and not os.path.exists(tmpdir), \
            "the task's temp directory is removed when it ends"
        assert (open_dir / "work" / "b1" / "made-here").stat().st_uid == NOBODY.pw_uid

        r = run_one(runner, results, f"cat {secret}", task="steal")
        assert r.exit_code != 0 and b"Permission denied" in r.output_tail
        r = run_one(runner, results, "ls ../.results; ls ..", task="look")
        assert r.exit_code != 0 and b"Permission denied" in r.output_tail
    finally:
        runner.stop()


@as_root
def test_a_root_agent_refuses_a_work_directory_its_task_user_cannot_reach(tmp_path):
    # pytest's tmp_path is under /tmp/pytest-of-root (0700).
    with pytest.raises(ConfigError, match="tasks run as nobody, who cannot enter"):
        Runner(str(tmp_path / "work"), lambda r: None, task_user=sandbox.resolve_task_user(None))


@as_root
def test_an_agent_that_is_not_root_refuses_another_task_user_at_start():
    # A real agent process that drops root right after its imports (the interpreter
    # lives under /root, which nobody cannot read), then starts as usual.
    script = ("import os, sys; from agent import daemon; "
              f"os.setgid({NOBODY.pw_gid}); os.setgroups([]); os.setuid({NOBODY.pw_uid}); "
              "sys.exit(daemon.main(['--name', 'a1', '--workdir', '/tmp', '--etcd', 'http://127.0.0.1:1', "
              "'--task-user', 'root']))")
    done = subprocess.run([sys.executable, "-c", script], cwd="/", env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert message.startswith("baton agent: --task-user root needs an agent running as root"), message
    assert "\n" not in message
