"""Crash failover with real processes: the coordinator that would lead next
revokes a dead leader's lease instead of waiting for it to expire
(coordinator.leader_probe, ha.REVOKE), and never a paused leader's, nor with
crash_detection off. The path is asserted from what the cluster recorded
(the takeover event's reason, the revocation counter), not from timings.
"""
from __future__ import annotations

import pytest

from tests.e2e.test_builds import assert_exactly_once, submit, wait_build
from tests.e2e.test_failover import metrics_of, sleepy_build, state_of
from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow


def takeover_events(cluster, via, kind):
    return [e for e in cluster.api(via).status().get("events", []) if e["type"] == kind]


def test_sigkill_of_the_primary_is_taken_over_by_revoking_its_lease_and_back(make_cluster, tmp_path):
    # A long lease: waiting it out would take ~10 s; the revocation does not wait.
    cluster = make_cluster(agents=2, backups=1, cores=2, ttl=10, grace=4)
    cluster.api("p1").request("PUT", "/api/v1/settings", {"failback_delay": 600})  # b1 keeps leading below
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 12, 0.5)
    build_id = submit(cluster, spec)
    wait_until(lambda: any(t["state"] == "done" for t in cluster.api("p1").build(build_id)["tasks"]), 60,
               message="a task done")
    p1 = cluster.leader()
    assert cluster.etcd().lease_ttl(p1.lease_id) > 0
    cluster.coordinators["p1"].kill()
    cluster.wait_leader("b1", timeout=20)
    assert cluster.etcd().lease_ttl(p1.lease_id) == -1, "p1's lease is gone"
    [failover] = takeover_events(cluster, "b1", "failover")
    assert failover["coordinator"] == "b1"
    assert failover["detail"] == (f"b1 took over: p1's process is gone: connection refused at {p1.grpc}; "
                                  f"lease revoked")
    assert state_of(cluster, "b1").get("revocations") == 1
    assert "baton_crash_revocations_total 1" in metrics_of(cluster, "b1")
    cluster.wait_agents(2, timeout=20, coordinator="b1")
    build = wait_build(cluster, build_id, via="b1", timeout=120)
    assert build["state"] == "done"
    assert_exactly_once(cluster, build_id, ids)

    # The primary returns; it would lead next, so it watches b1 and revokes b1's lease when b1 dies.
    cluster.add_coordinator("p1", "primary")
    cluster.wait_registered("p1")
    b1 = cluster.leader()
    wait_until(lambda: state_of(cluster, "p1").get("leader") == "b1", 20, message="p1 to see b1 lead")
    cluster.coordinators["b1"].kill()
    cluster.wait_leader("p1", timeout=20)
    cluster.wait_web("p1")
    leads = [e for e in takeover_events(cluster, "p1", "leader") if e["epoch"] > b1.epoch]
    assert [e["detail"] for e in leads] == [
        f"p1 leads: b1's process is gone: connection refused at {b1.grpc}; lease revoked"]
    assert state_of(cluster, "p1").get("revocations") == 1


def test_a_paused_primary_is_never_revoked_the_lease_decides(make_cluster):
    cluster = make_cluster(agents=1, backups=1, cores=1, ttl=2, grace=4)
    cluster.wait_agents(1, timeout=20, coordinator="p1")
    cluster.coordinators["p1"].pause()   # SIGSTOP: its kernel still accepts on its port
    try:
        cluster.wait_leader("b1", timeout=20)
        [failover] = takeover_events(cluster, "b1", "failover")
        assert failover["detail"] == "b1 took over: the primary p1 is unavailable (its lease ended)"
        assert state_of(cluster, "b1").get("revocations") == 0
    finally:
        cluster.coordinators["p1"].resume()


def test_with_crash_detection_off_a_killed_primary_waits_for_its_lease(make_cluster):
    cluster = make_cluster(agents=1, backups=1, cores=1, ttl=2, grace=4)
    cluster.api("p1").request("PUT", "/api/v1/settings", {"crash_detection": False})
    cluster.wait_agents(1, timeout=20, coordinator="p1")
    # Every snapshot b1 reads after this kill holds the setting: its decision cannot revoke.
    cluster.coordinators["p1"].kill()
    cluster.wait_leader("b1", timeout=20)
    [failover] = takeover_events(cluster, "b1", "failover")
    assert failover["detail"] == "b1 took over: the primary p1 is unavailable (its lease ended)"
    assert state_of(cluster, "b1").get("revocations") == 0
