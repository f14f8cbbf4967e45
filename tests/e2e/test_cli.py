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

from lease.client import connect
from lease.errors import EtcdAuthError
from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def baton(*args, env=None, input=None, timeout=60, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), input=input, timeout=timeout, cwd=cwd)


def bare_env() -> dict:
    """The environment without any BATON_ setting: what a new shell after `baton up` has
    (PYTHONPATH names this checkout, for commands run in other directories)."""
    return dict({k: v for k, v in os.environ.items() if not k.startswith("BATON_")}, PYTHONPATH=str(ROOT))


def bare(*args, cwd, input=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=bare_env(),
                          input=input, timeout=timeout, cwd=cwd)


class Up:
    """`baton up` in the background, its output collected line by line."""

    def __init__(self, tmp: Path | None, *args: str, password: str | None = "correct-horse-1", cwd: Path = ROOT):
        """tmp: the --dir (None: the default, .baton under cwd)."""
        env = {k: v for k, v in os.environ.items() if k != "BATON_ADMIN_PASSWORD"}
        env["PYTHONPATH"] = str(ROOT)
        if password is not None:
            env["BATON_ADMIN_PASSWORD"] = password
        where = ["--dir", str(tmp)] if tmp is not None else []
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "up", *where, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                     env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def etcd_client_files(text: str) -> dict:
    """The CLI's etcd client certificate and key that `baton up` printed, as environment."""
    found = re.search(r"etcd for the CLI:\s+--etcd-cert (\S+) --etcd-key (\S+)", text)
    assert found, text
    return {"BATON_ETCD_CERT": found.group(1), "BATON_ETCD_KEY": found.group(2)}


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
        # etcd is never open: the CLI has its own read-only client certificate (docs/etcd-auth.md).
        cli_cert = etcd_client_files(up.text)
        env = {"BATON_USER": "admin", "BATON_PASSWORD": "correct-horse-1", "BATON_CA": ca, **cli_cert}
        # baton up's own agent certificate reads the leader key but never the users.
        agent_files = tmp_path / "up" / "certs" / "etcd"
        agent = connect(etcd, ca_cert=ca, cert=str(agent_files / "agent-a1.pem"),
                        key=str(agent_files / "agent-a1-key.pem"))
        try:
            assert agent.get("/baton/default/leader")[0] is not None
            with pytest.raises(EtcdAuthError):
                agent.get("/baton/default/users/admin")
        finally:
            agent.close()
        refused_etcd = baton("status", *common, "--etcd-timeout", "1", env={**env, "BATON_ETCD_CERT": "",
                                                                         "BATON_ETCD_KEY": ""})
        assert refused_etcd.returncode == 4 and "etcd unavailable" in refused_etcd.stderr

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
        viewer = {"BATON_USER": "carol", "BATON_PASSWORD": "carols-password", "BATON_CA": ca, **cli_cert}
        refused = baton("backup", "select", "b1", *common, env=viewer)
        assert refused.returncode == 3 and "403" in refused.stderr
        wrong = baton("status", *common, env=dict(env, BATON_PASSWORD="nope"))
        assert wrong.returncode == 3 and "401" in wrong.stderr
        # Options before the verb count as much as after it.
        before = baton("--etcd", etcd, "build", "--etcd-ca", ca, "show", build["id"], "--json", env=env)
        assert before.returncode == 0 and json.loads(before.stdout)["state"] == "done", before.stderr
        elsewhere = baton("--cluster", "another", "build", "show", build["id"], *common, env=env)
        # The CLI's etcd user may read only its own cluster's leader and coordinators.
        assert elsewhere.returncode == 3 and "etcd refused the credentials" in elsewhere.stderr
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
                 "ca": re.search(r"trust the CA:\s+(\S+)", up.text).group(1), **etcd_client_files(up.text)}
        return up, found

    def stop(up: Up) -> None:
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(60)
        assert up.proc.returncode == 0, up.text

    def cli(found: dict, *args: str, timeout: float = 60):
        env = {"BATON_USER": "admin", "BATON_PASSWORD": found["password"], "BATON_CA": found["ca"],
               "BATON_ETCD_CERT": found["BATON_ETCD_CERT"], "BATON_ETCD_KEY": found["BATON_ETCD_KEY"]}
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


def test_after_baton_up_commands_need_no_flags_and_users_are_managed(tmp_path):
    """Run where `baton up` keeps its cluster (./.baton), or with --context DIR from
    anywhere: no --etcd, --etcd-ca, --ca or credentials. Then user passwd/list/delete."""
    work = tmp_path / "work"
    work.mkdir()
    up = Up(None, "--agents", "1", "--backups", "0", "--ttl", "2", cwd=work)
    try:
        wait_until(lambda: "Press Ctrl-C" in up.text or up.proc.poll() is not None, 90,
                   message="baton up to be ready")
        assert up.proc.poll() is None, up.text
        assert "Try: baton build submit examples/hello.yaml --wait" in up.text
        assert (work / ".baton" / "context.json").stat().st_mode & 0o777 == 0o600

        status = bare("status", "--json", cwd=work)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["leader"]["name"] == "p1"
        built = bare("build", "submit", str(ROOT / "examples" / "hello.yaml"), "--wait", "--json", cwd=work,
                     timeout=120)
        assert built.returncode == 0 and json.loads(built.stdout)["state"] == "done", built.stderr
        elsewhere = bare("--context", str(work / ".baton"), "build", "show", json.loads(built.stdout)["id"],
                         cwd=tmp_path)
        assert elsewhere.returncode == 0 and "done" in elsewhere.stdout, elsewhere.stderr

        assert bare("user", "add", "carol", "--role", "viewer", cwd=work, input="carols-password\n").returncode == 0
        listed = bare("user", "list", cwd=work)
        assert listed.returncode == 0 and re.search(r"^carol\s+viewer$", listed.stdout, re.M), listed.stdout
        changed = bare("user", "passwd", "carol", cwd=work, input="carols-new-password\n")
        assert changed.returncode == 0, changed.stderr
        as_carol = dict(bare_env(), BATON_USER="carol", BATON_PASSWORD="carols-new-password")
        carol = subprocess.run([sys.executable, "-m", "cli", "status"], capture_output=True, text=True,
                               env=as_carol, cwd=work, timeout=60)
        assert carol.returncode == 0, carol.stderr  # her own credentials win over the context's
        assert bare("user", "delete", "carol", cwd=work).returncode == 0
        assert "carol" not in bare("user", "list", cwd=work).stdout
        last = bare("user", "delete", "admin", cwd=work)
        assert last.returncode == 2 and "last admin" in last.stderr
    finally:
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(60)


def test_wait_follows_the_build_through_a_failover_and_a_handback(make_cluster, tmp_path):
    """SIGKILL the primary while `baton build submit --wait` waits: it keeps waiting
    on the backup, through the handback, and ends with the build's result."""
    cluster = make_cluster(agents=2, backups=1, cores=1, failback_delay=1.0, grace=4)
    steps = [{"id": f"step{i}", "cmd": "sleep 2 && echo step", **({"deps": [f"step{i - 1}"]} if i else {})}
             for i in range(6)]
    build_file = tmp_path / "slow.json"
    build_file.write_text(json.dumps({"name": "slow", "tasks": steps}))
    waiting = subprocess.Popen([sys.executable, "-m", "cli", "--context", str(cluster.dir), "build", "submit",
                                str(build_file), "--wait", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=bare_env(), cwd=tmp_path)
    try:
        def running() -> bool:
            builds = cluster.api("p1").request("GET", "/api/v1/builds")["builds"]
            return any(b.get("state") == "running" for b in builds)
        wait_until(running, 60, message="the build to run")
        cluster.coordinators["p1"].kill()
        cluster.wait_leader("b1", timeout=30)
        assert waiting.poll() is None, waiting.communicate()
        cluster.add_coordinator("p1", "primary")
        cluster.wait_leader("p1", timeout=60)
        assert waiting.poll() is None, "the build ended before the handback; make it longer"
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    build = json.loads(out)
    assert build["state"] == "done" and [t["state"] for t in build["tasks"]] == ["done"] * 6
    assert err == ""  # piped: no progress lines
