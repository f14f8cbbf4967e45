"""Builds on one coordinator, end to end: real etcd, coordinator, agents and API."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cli.api_client import ApiError
from cluster.records import BUILD_ENDED
from tests.harness.audit import audit
from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def submit(cluster, spec, via="p1"):
    return cluster.api(via).request("POST", "/api/v1/builds", spec)["id"]


def wait_build(cluster, build_id, via="p1", timeout=120):
    def ended():
        build = cluster.api(via).build(build_id)
        return build if build["state"] in BUILD_ENDED else None
    return wait_until(ended, timeout, interval=0.2, message=f"build {build_id} to end")


def baton_cli(cluster, *args, timeout=120):
    """The `baton` command as a user runs it against this cluster (it finds the leader in etcd)."""
    env = dict(os.environ, BATON_USER="admin", BATON_PASSWORD=cluster.admin_password)
    if cluster.ca:
        env["BATON_CA"] = cluster.ca
    return subprocess.run([sys.executable, "-m", "cli", *args, *cluster.cli_etcd_args()], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def ran_counts(path):
    return Counter(path.read_text().split()) if path.exists() else Counter()


def assert_exactly_once(cluster, build_id, task_ids):
    """The whole history checked (tests/harness/audit.py: fenced writes inside their epochs, one
    holder per epoch from the leader key's history, every attempt ended once, every build ended,
    the agents' runs assigned by fenced writes), and each task of this build ended exactly once."""
    verdict = audit(cluster)
    ends = {task: n for (build, task), n in verdict.ends.items() if build == build_id}
    assert ends == {t: 1 for t in task_ids}
    assert verdict.signed_writes, "task records carry no epoch"
    return verdict


def test_200_task_build_across_4_agents(make_cluster, tmp_path):
    cluster = make_cluster(agents=4, backups=0, cores=2)
    ran = tmp_path / "ran.log"
    ids = [f"t{i:03d}" for i in range(200)]
    spec = {"name": "wide", "tasks": [{"id": t, "cmd": f"echo {t} >> {ran}"} for t in ids]}
    build_id = submit(cluster, spec)
    build = wait_build(cluster, build_id)
    assert build["state"] == "done"
    assert {t["state"] for t in build["tasks"]} == {"done"}
    assert {t["attempt"] for t in build["tasks"]} == {1}
    assert len({t["agent"] for t in build["tasks"]}) == 4, "the work is spread over every agent"
    assert ran_counts(ran) == Counter({t: 1 for t in ids})
    assert_exactly_once(cluster, build_id, ids)


def test_agent_killed_mid_task_has_its_tasks_run_elsewhere(make_cluster, tmp_path):
    cluster = make_cluster(agents=3, backups=0, cores=1, agent_lease_ttl=2)
    ran = tmp_path / "ran.log"
    ids = [f"slow{i}" for i in range(6)]
    spec = {"name": "victim", "tasks": [{"id": t, "cmd": f"echo {t} >> {ran}; sleep 3"} for t in ids]}
    build_id = submit(cluster, spec)

    def running_on_a1():
        tasks = cluster.api("p1").build(build_id)["tasks"]
        return [t["id"] for t in tasks if t["state"] == "running" and t["agent"] == "a1"]
    victims = wait_until(running_on_a1, 30, message="a task running on a1")
    cluster.agents["a1"].kill()
    build = wait_build(cluster, build_id)
    assert build["state"] == "done"
    by_id = {t["id"]: t for t in build["tasks"]}
    for victim in victims:
        assert by_id[victim]["attempt"] == 2 and by_id[victim]["agent"] != "a1"
    assert_exactly_once(cluster, build_id, ids)


def test_coordinator_restart_mid_build_loses_nothing(make_cluster, tmp_path):
    cluster = make_cluster(agents=3, backups=0, cores=2, grace=8)
    ran = tmp_path / "ran.log"
    ids = [f"step{i:02d}" for i in range(18)]
    spec = {"name": "restart", "tasks": [{"id": t, "cmd": f"echo {t} >> {ran}; sleep 1.5"} for t in ids]}
    build_id = submit(cluster, spec)
    wait_until(lambda: sum(t["state"] == "done" for t in cluster.api("p1").build(build_id)["tasks"]) >= 3,
               60, message="three tasks done")
    epoch = cluster.leader().epoch
    cluster.coordinators["p1"].kill()
    cluster.add_coordinator("p1", "primary")
    wait_until(lambda: (lambda l: l is not None and l.epoch != epoch)(cluster.leader()), 30, message="a new epoch")
    build = wait_build(cluster, build_id)
    assert build["state"] == "done"
    # Agents kept running their tasks and reported them to the restarted
    # coordinator: no task ran twice. (A task marked running whose assignment
    # never reached its agent before the kill is run again under attempt 2; it
    # still runs only once.)
    assert ran_counts(ran) == Counter({t: 1 for t in ids})
    assert_exactly_once(cluster, build_id, ids)


def process_gone(pid: int) -> bool:
    """True once the process has exited (a zombie counts as gone: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_cancelled_build_stops_its_running_tasks_and_the_next_build_runs(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=2)
    pids = tmp_path / "pids"
    pids.mkdir()
    pids.chmod(0o1777)  # the tasks run as nobody (agent/sandbox.py)
    ids = [f"long{i}" for i in range(6)]
    # exec: the task's shell becomes the sleep, so the pid written is the process to watch.
    spec = {"name": "long", "tasks": [{"id": t, "cmd": f"echo $$ > {pids}/{t}; exec sleep 30"} for t in ids]
            + [{"id": "after", "cmd": "true", "deps": ["long0"]}]}
    build_id = submit(cluster, spec)

    def four_running():
        running = [t for t in cluster.api("p1").build(build_id)["tasks"] if t["state"] == "running"]
        started = [p for p in pids.iterdir() if p.read_text().strip()]
        return len(running) == 4 and len(started) == 4 and started
    started = wait_until(four_running, 60, message="four tasks running on the two agents")
    running_pids = [int(p.read_text()) for p in started]
    assert not any(process_gone(pid) for pid in running_pids)

    cancelled = baton_cli(cluster, "build", "cancel", build_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{build_id}: cancel requested" in cancelled.stdout
    wait_until(lambda: all(process_gone(pid) for pid in running_pids), 20,
               message="the cancelled tasks' processes are gone from the agents")
    build = wait_build(cluster, build_id, timeout=30)
    assert build["state"] == "cancelled"
    assert {(t["state"], t["error"]) for t in build["tasks"]} == {("failed", "cancelled")}
    assert sorted(p.name for p in pids.iterdir()) == sorted(p.name for p in started), "queued tasks never started"
    assert_exactly_once(cluster, build_id, ids + ["after"])
    with pytest.raises(ApiError) as again:
        cluster.api("p1").cancel_build(build_id)
    assert again.value.status == 409 and "already ended (cancelled)" in str(again.value)
    listed = baton_cli(cluster, "build", "list")
    assert listed.returncode == 0 and any(line.split()[:3] == [build_id, "long", "cancelled"]
                                          for line in listed.stdout.splitlines()), listed.stdout

    ran = tmp_path / "ran.log"
    later_ids = [f"quick{i}" for i in range(4)]
    later = submit(cluster, {"name": "later", "tasks": [{"id": t, "cmd": f"echo {t} >> {ran}"}
                                                                 for t in later_ids]})
    assert wait_build(cluster, later)["state"] == "done"
    assert ran_counts(ran) == Counter({t: 1 for t in later_ids})
    assert_exactly_once(cluster, later, later_ids)
