"""Failover while etcd itself is hurt: a member killed, quorum lost and restored."""
from __future__ import annotations

import pytest

from tests.e2e.test_builds import submit, wait_build
from tests.e2e.test_failover import done_count, finish_and_audit, sleepy_build, state_of
from tests.harness.wait import holds_for, wait_until

pytestmark = pytest.mark.slow


def test_one_etcd_member_killed_during_a_failover(make_cluster, etcd_cluster, cluster_name, tmp_path):
    cluster = make_cluster(agents=3, backups=1, cores=2, etcd_urls=etcd_cluster.urls, cluster=cluster_name,
                           failback_delay=1.0, grace=4)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 20, 1.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 3, 60, message="3 tasks done")
    # Kill the raft leader and the primary together: the failover happens on a 2-member etcd.
    victim = etcd_cluster.members.index(etcd_cluster.leader_member())
    etcd_cluster.kill(victim)
    cluster.coordinators["p1"].kill()
    cluster.wait_leader("b1", timeout=30)
    cluster.wait_agents(3, timeout=30, coordinator="b1")
    build = wait_build(cluster, build_id, via="b1", timeout=120)
    assert build["state"] == "done"
    etcd_cluster.restart(victim)
    cluster.add_coordinator("p1", "primary")
    cluster.wait_leader("p1", timeout=30)
    finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")


def test_quorum_lost_then_restored(make_cluster, etcd_cluster, cluster_name, tmp_path):
    cluster = make_cluster(agents=2, backups=1, cores=2, etcd_urls=etcd_cluster.urls, cluster=cluster_name,
                           failback_delay=1.0, grace=6)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 12, 1.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 2, 60, message="2 tasks done")
    etcd_cluster.pause(0)
    etcd_cluster.pause(1)
    # No quorum: no lease can be renewed, so nobody may act.
    wait_until(lambda: not state_of(cluster, "p1").get("acting") and not state_of(cluster, "b1").get("acting"),
               10, message="every coordinator to stop acting")
    holds_for(lambda: not state_of(cluster, "p1").get("acting") and not state_of(cluster, "b1").get("acting"),
              2 * cluster.ttl, message="no coordinator acts without quorum")
    etcd_cluster.resume(0)
    etcd_cluster.resume(1)
    etcd_cluster.wait_quorum()
    # The cluster recovers on its own: a leader again, and the build completes.
    wait_until(lambda: cluster.leader() is not None, 30, message="a leader after quorum returns")
    cluster.wait_leader("p1", timeout=30)
    finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")
