"""Build tasks are untrusted code (docs/design.md section 9), end to end: a `baton up`
cluster (TLS on, real processes) whose agents run as root, as this machine does.

Before: every task inherited the agent's environment (BATON_ADMIN_PASSWORD,
BATON_AGENT_TOKEN), ran as root, and could read the token and the CA key
through ../../.. from its work directory, inside the cluster directory.
"""
from __future__ import annotations

import os

import pytest

from tests.harness.wait import wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="the task user is switched only by a root agent")]


def run_build(cluster, spec: dict) -> dict:
    """Submit, wait for the end, return {task id: task} of the finished build."""
    build_id = cluster.api("p1").request("POST", "/api/v1/builds", spec)["id"]

    def ended():
        build = cluster.api("p1").build(build_id)
        return build if build["state"] in ("done", "failed") else None
    build = wait_until(ended, 60, interval=0.2, message=f"build {build_id} to end")
    return {t["id"]: t for t in build["tasks"]}


def test_tasks_see_a_clean_environment_and_none_of_the_clusters_secrets(make_cluster, monkeypatch):
    # What `baton up` is typically started with; agents inherit it.
    monkeypatch.setenv("BATON_ADMIN_PASSWORD", "admin-secret-123")
    monkeypatch.setenv("BATON_AGENT_TOKEN", "agent-secret-456")
    cluster = make_cluster(agents=1, backups=0, tls=True)
    secrets = {
        "token": cluster.dir / "agent-token",
        "password": cluster.dir / "admin-password",
        "ca-key": cluster.ca_dir / "ca-key.pem",
        "tls-key": cluster.certs_dir / "localhost-key.pem",
    }
    tasks = [{"id": "env", "cmd": "env", "env": {"CC": "clang"}},
             {"id": "whoami", "cmd": "id -un; touch made-by-a-task; ls -n made-by-a-task"},
             {"id": "list-cluster", "cmd": f"ls {cluster.dir}"},
             {"id": "list-up", "cmd": "ls ../.. ../../../" + cluster.dir.name}]
    tasks += [{"id": f"read-{name}", "cmd": f"cat {path}"} for name, path in secrets.items()]
    # Starting a task as another user must not disturb the agent's gRPC (a fork() that ran
    # gRPC's fork handlers crashed 2 of 12 such tasks with SIGABRT/SIGSEGV): several at once.
    tasks += [{"id": f"again-{i}", "cmd": "id -un"} for i in range(12)]
    by_id = run_build(cluster, {"name": "nosy", "env": {"MODE": "release"}, "tasks": tasks})
    out = {tid: (t["output_tail"] or "") for tid, t in by_id.items()}

    env = dict(line.split("=", 1) for line in out["env"].splitlines() if "=" in line)
    assert by_id["env"]["exit_code"] == 0
    assert env["CC"] == "clang" and env["MODE"] == "release", "the build file's env reaches the task"
    assert not {"BATON_ADMIN_PASSWORD", "BATON_AGENT_TOKEN"} & set(env)
    assert "admin-secret-123" not in out["env"] and "agent-secret-456" not in out["env"]
    assert f"{cluster.dir}/" not in out["env"], "no etcd or TLS paths of the cluster"
    assert not env["HOME"].startswith(f"{cluster.dir}/"), "work directories are outside the cluster's"

    assert by_id["whoami"]["exit_code"] == 0 and out["whoami"].splitlines()[0] == "nobody"
    assert {(by_id[f"again-{i}"]["exit_code"], out[f"again-{i}"]) for i in range(12)} == {(0, "nobody\n")}
    assert " 65534 65534 " in out["whoami"], "the task's files belong to the task user"

    for tid in ["list-cluster", "list-up", *(f"read-{name}" for name in secrets)]:
        assert by_id[tid]["exit_code"] != 0 and "Permission denied" in out[tid], (tid, out[tid])
    assert by_id["read-token"]["output_tail"].count(cluster.agent_token) == 0
