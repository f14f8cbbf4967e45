"""Builds on one coordinator, end to end: real etcd, coordinator, agents and API."""
from __future__ import annotations

from collections import Counter

import pytest

from cluster.events import list_events
from tests.harness.audit import audit
from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow


def submit(cluster, spec, via="p1"):
    return cluster.api(via).request("POST", "/api/v1/builds", spec)["id"]


def wait_build(cluster, build_id, via="p1", timeout=120):
    def ended():
        build = cluster.api(via).build(build_id)
        return build if build["state"] in ("done", "failed") else None
    return wait_until(ended, timeout, interval=0.2, message=f"build {build_id} to end")


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
