"""The `baton` command as users run it: `baton up`, then the other commands against it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def baton(*args, env=None, input=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), input=input, timeout=timeout, cwd=ROOT)


class Up:
    """`baton up` in the background, its output collected line by line."""

    def __init__(self, tmp: Path, *args: str, password: str | None = "correct-horse-1"):
        env = {k: v for k, v in os.environ.items() if k != "BATON_ADMIN_PASSWORD"}
        if password is not None:
            env["BATON_ADMIN_PASSWORD"] = password
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--dir", str(tmp), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_baton_up_runs_a_cluster_that_the_cli_drives_and_ctrl_c_stops(tmp_path):
    up = Up(tmp_path / "up", "--agents", "2", "--backups", "1", "--ttl", "2")
    try:
        wait_until(lambda: "Press Ctrl-C" in up.text or up.proc.poll() is not None, 90,
                   message="baton up to be ready")
        assert up.proc.poll() is None, up.text
        etcd = re.search(r"etcd:\s+(\S+)", up.text).group(1)
        ca = re.search(r"trust the CA:\s+(\S+)", up.text).group(1)
        assert "admin / correct-horse-1" in up.text
        assert "https://localhost:" in up.text
        common = ["--etcd", etcd, "--etcd-ca", ca]
        env = {"BATON_USER": "admin", "BATON_PASSWORD": "correct-horse-1", "BATON_CA": ca}

        status = baton("status", "--json", *common, env=env)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["leader"]["name"] == "p1" and data["selected_backup"] == "b1"
        wait_until(lambda: len(json.loads(baton("status", "--json", *common, env=env).stdout)["agents"]) == 2, 30)

        built = baton("build", "submit", str(ROOT / "examples" / "hello.yaml"), "--wait", "--json", *common,
                      env=env, timeout=120)
        assert built.returncode == 0, built.stderr
        build = json.loads(built.stdout)
        assert build["state"] == "done" and len(build["tasks"]) == 3
        shown = baton("build", "show", build["id"], *common, env=env)
        assert shown.returncode == 0 and "done" in shown.stdout

        assert baton("backup", "select", "none", *common, env=env).returncode == 0
        assert json.loads(baton("status", "--json", *common, env=env).stdout)["selected_backup"] is None
        added = baton("user", "add", "carol", "--role", "viewer", *common, env=env, input="carols-password\n")
        assert added.returncode == 0, added.stderr
        viewer = {"BATON_USER": "carol", "BATON_PASSWORD": "carols-password", "BATON_CA": ca}
        refused = baton("backup", "select", "b1", *common, env=viewer)
        assert refused.returncode == 3 and "403" in refused.stderr
        wrong = baton("status", *common, env=dict(env, BATON_PASSWORD="nope"))
        assert wrong.returncode == 3 and "401" in wrong.stderr
        # Options before the verb count as much as after it.
        before = baton("--etcd", etcd, "build", "--etcd-ca", ca, "show", build["id"], "--json", env=env)
        assert before.returncode == 0 and json.loads(before.stdout)["state"] == "done", before.stderr
        elsewhere = baton("--cluster", "another", "build", "show", build["id"], *common, env=env)
        assert elsewhere.returncode == 4 and "no coordinator" in elsewhere.stderr
    finally:
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(60)
    assert up.proc.returncode == 0, up.text
    # Everything it started is gone: nothing listens on the UI port any more.
    port = int(re.search(r"p1 \(primary\):\s+https://localhost:(\d+)", up.text).group(1))
    import socket
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_bad_configuration_gives_one_sentence_and_exit_2_and_unreachable_4(tmp_path):
    bad_ttl = baton("coordinator", "--name", "p1", "--role", "primary", "--ttl", "1", "--no-web")
    assert bad_ttl.returncode == 2
    assert "ttl must be a whole number of seconds >= 2" in bad_ttl.stderr
    assert "Traceback" not in bad_ttl.stderr
    no_primary = baton("coordinator", "--name", "b1", "--role", "backup")
    assert no_primary.returncode == 2 and "needs --primary" in no_primary.stderr
    bad_url = baton("status", "--etcd", "ftp://x")
    assert bad_url.returncode == 2 and "is not http(s)://host:port" in bad_url.stderr
    unreachable = baton("status", "--etcd", "http://127.0.0.1:1", "--etcd-timeout", "0.5")
    assert unreachable.returncode == 4 and "etcd unavailable" in unreachable.stderr  # 4: cannot reach
    missing = baton("build", "submit", str(tmp_path / "nope.yaml"), "--etcd", "http://127.0.0.1:1")
    assert missing.returncode == 2 and "cannot read build file" in missing.stderr


def test_demo_runs_a_failover_and_exits_0(tmp_path):
    demo = baton("demo", "--dir", str(tmp_path / "demo"), "--agents", "2", timeout=240)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "kill -> backup leads" in demo.stdout and "every task done: True" in demo.stdout


def test_baton_up_again_on_the_same_directory_reuses_its_cluster(tmp_path):
    """The second `baton up` keeps the admin password (kept in the directory, mode 0600),
    the certificates and the etcd data: the earlier build is still there."""
    directory = tmp_path / "up"

    def start() -> tuple[Up, dict]:
        up = Up(directory, "--agents", "1", "--backups", "0", "--ttl", "2", password=None)
        wait_until(lambda: "Press Ctrl-C" in up.text or up.proc.poll() is not None, 90,
                   message="baton up to be ready")
        assert up.proc.poll() is None, up.text
        found = {"password": re.search(r"log in as:\s+admin / (\S+)", up.text).group(1),
                 "etcd": re.search(r"etcd:\s+(\S+)", up.text).group(1),
                 "ca": re.search(r"trust the CA:\s+(\S+)", up.text).group(1)}
        return up, found

    def stop(up: Up) -> None:
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(60)
        assert up.proc.returncode == 0, up.text

    def cli(found: dict, *args: str, timeout: float = 60):
        env = {"BATON_USER": "admin", "BATON_PASSWORD": found["password"], "BATON_CA": found["ca"]}
        return baton(*args, "--etcd", found["etcd"], "--etcd-ca", found["ca"], env=env, timeout=timeout)

    up, first = start()
    try:
        built = cli(first, "build", "submit", str(ROOT / "examples" / "hello.yaml"), "--wait", "--json",
                    timeout=120)
        assert built.returncode == 0, built.stderr
        build_id = json.loads(built.stdout)["id"]
    finally:
        stop(up)
    kept = directory / "admin-password"
    assert kept.read_text().strip() == first["password"]
    assert kept.stat().st_mode & 0o777 == 0o600
    ca_before = Path(first["ca"]).read_bytes()

    up, second = start()
    try:
        assert second["password"] == first["password"], up.text
        assert Path(second["ca"]).read_bytes() == ca_before
        status = cli(second, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = cli(second, "build", "show", build_id)
        assert shown.returncode == 0 and "done" in shown.stdout, shown.stderr
    finally:
        stop(up)
