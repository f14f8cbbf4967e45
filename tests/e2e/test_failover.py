"""Backup coordinators under real faults (issue: selection, failover, handback, deselection).

Every test runs real processes (etcd, coordinators with their UIs, agents),
injects a real fault (SIGKILL, SIGSTOP, a cut-off through a TCP proxy, etcd
members killed) and checks what a user would notice: the build completes,
every task's result is recorded exactly once, no two coordinators wrote
under the same epoch, and the agents end up on the coordinator that leads.
"""
from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from cluster.daemon_state import read_state
from cli.api_client import ApiError
from tests.e2e.test_builds import assert_exactly_once, baton_cli, ran_counts, submit, wait_build
from tests.harness.audit import late_writes
from tests.harness.wait import holds_for, wait_until

pytestmark = pytest.mark.slow


def sleepy_build(ran: Path, n: int, seconds: float, name: str = "sleepy"):
    ids = [f"{name}{i:02d}" for i in range(n)]
    spec = {"name": name, "tasks": [{"id": t, "cmd": f"echo {t} >> {ran}; sleep {seconds}"} for t in ids]}
    return ids, spec


def done_count(cluster, build_id, via):
    return sum(t["state"] == "done" for t in cluster.api(via).build(build_id)["tasks"])


def state_of(cluster, name):
    return read_state(str(cluster.dir / "state" / f"{name}.state.json"), max_age=3600) or {}


def metrics_of(cluster, name) -> str:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=cluster.ca) if cluster.ca else None
    with urllib.request.urlopen(cluster.web_urls[name] + "/metrics", timeout=5, context=context) as resp:
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus exposition (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def events(cluster, via):
    return cluster.api(via).status().get("events", [])


def finish_and_audit(cluster, build_id, ids, ran, via, leader):
    build = wait_build(cluster, build_id, via=via, timeout=180)
    assert build["state"] == "done", build
    counts = ran_counts(ran)
    assert set(counts) == set(ids), "every task ran"
    cluster.wait_agents(len(cluster.agents), timeout=30, coordinator=leader)
    assert cluster.leader().name == leader
    verdict = assert_exactly_once(cluster, build_id, ids)  # also: every agent's last registration is on it
    return build, verdict


def test_primary_sigkill_mid_build_fails_over_with_tls_and_hands_back(make_cluster, tmp_path):
    cluster = make_cluster(agents=3, backups=2, cores=2, tls=True, failback_delay=1.0, grace=4)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 24, 1.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 3, 60, message="3 tasks done")
    epoch1 = cluster.leader().epoch
    cluster.coordinators["p1"].kill()
    cluster.wait_leader("b1", timeout=20)
    assert cluster.leader().epoch > epoch1
    cluster.wait_agents(3, timeout=20, coordinator="b1")
    before = done_count(cluster, build_id, "b1")
    wait_until(lambda: done_count(cluster, build_id, "b1") > before, 60, message="progress under b1")
    assert state_of(cluster, "b2").get("acting") is False, "the unselected backup stays idle"
    types = [e["type"] for e in events(cluster, "b1")]
    assert "failover" in types
    # Fed by the daemon through its state file, rewritten every HA cycle: a result b1
    # just recorded reaches /metrics by the next cycle.
    metrics = wait_until(lambda: (lambda m: m if metric(m, "baton_task_duration_seconds_count") > 0 else None)(
        metrics_of(cluster, "b1")), 10, message="b1's task durations on /metrics")
    assert "baton_is_leader 1" in metrics and "baton_failovers_total 1" in metrics
    assert metric(metrics, "baton_tasks_finished_total") == metric(metrics, "baton_task_duration_seconds_count")
    assert metric(metrics, "baton_etcd_txn_seconds_count") > 0
    assert metric(metrics, "baton_daemon_process_resident_memory_bytes") > 0
    cluster.add_coordinator("p1", "primary")
    cluster.wait_leader("p1", timeout=30)
    finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")
    assert "handback" in [e["type"] for e in events(cluster, "p1")]
    wait_until(lambda: metric(metrics_of(cluster, "b1"), "baton_handbacks_total") == 1, 10,
               message="b1 counts its handback")


def test_paused_primary_writes_nothing_after_waking_and_gets_the_baton_back(make_cluster, tmp_path):
    cluster = make_cluster(agents=3, backups=1, cores=2, failback_delay=1.0, grace=4)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 24, 1.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 3, 60, message="3 tasks done")
    epoch1 = cluster.leader().epoch
    p1 = cluster.coordinators["p1"]
    p1.pause()
    cluster.wait_leader("b1", timeout=20)
    takeover_rev = cluster.etcd().revision()
    cluster.wait_agents(3, timeout=20, coordinator="b1")
    p1.resume()
    # Awake again: it must not act on its old epoch; it rejoins and gets the baton back by handback.
    cluster.wait_leader("p1", timeout=30)
    build, verdict = finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")
    late = late_writes(verdict, cluster.keys, epoch1, takeover_rev)
    assert late == [], "the paused primary wrote under its old epoch after the backup took over"


def test_primary_cut_off_from_etcd_stops_before_its_lease_expires(make_cluster, tmp_path, etcd_member,
                                                                   cluster_name, tcp_proxy):
    proxy = tcp_proxy("127.0.0.1", etcd_member.client_port)
    cluster = make_cluster(agents=2, backups=1, cores=2, etcd_urls=etcd_member.client_url, cluster=cluster_name,
                           etcd_for={"p1": proxy.url("http")}, failback_delay=1.0, grace=4)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 12, 1.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 2, 60, message="2 tasks done")
    epoch1 = cluster.leader().epoch
    cut_at = time.monotonic()
    proxy.set_mode("blackhole")
    # The agents can still reach p1, but p1 must stop acting within renew_deadline (< ttl).
    wait_until(lambda: state_of(cluster, "p1").get("acting") is False, 10, interval=0.02,
               message="p1 to stop acting")
    stopped_after = time.monotonic() - cut_at
    assert stopped_after < cluster.ttl, f"p1 kept acting {stopped_after:.2f}s, past its ttl"
    takeover = cluster.wait_leader("b1", timeout=20)
    cluster.wait_agents(2, timeout=20, coordinator="b1")
    proxy.set_mode("pass")
    cluster.wait_leader("p1", timeout=30)
    _, verdict = finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")
    assert late_writes(verdict, cluster.keys, epoch1, takeover.epoch) == [], \
        "the cut-off primary wrote under its old epoch after the backup took over"


def test_no_failover_when_the_selected_backup_died_first(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=2, cores=2, grace=6)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 8, 2.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: any(t["state"] == "running" for t in cluster.api("p1").build(build_id)["tasks"]), 30,
               message="tasks running")
    cluster.coordinators["b1"].kill()
    cluster.coordinators["p1"].kill()
    killed_at = time.monotonic()
    # Nobody takes over: b2 is not selected. Watch for a few ttls.
    wait_until(lambda: cluster.leader() is None, 10, message="the leader key to expire")
    holds_for(lambda: cluster.leader() is None and state_of(cluster, "b2").get("acting") is False,
              3 * cluster.ttl - (time.monotonic() - killed_at), message="no coordinator leads")
    # The agents kept running their tasks; the results arrive once p1 returns.
    cluster.add_coordinator("p1", "primary")
    cluster.wait_leader("p1", timeout=20)
    finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")


def test_wedged_primary_loop_loses_leadership(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=1, cores=2, test_hooks=True, grace=4)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 10, 1.0)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 2, 60, message="2 tasks done")
    epoch1 = cluster.leader().epoch
    cluster.coordinators["p1"].popen.send_signal(signal.SIGUSR1)  # the HA loop hangs; the process lives
    takeover = cluster.wait_leader("b1", timeout=20)
    assert cluster.coordinators["p1"].alive
    cluster.wait_agents(2, timeout=20, coordinator="b1")
    # The deposed p1 stays alive through the rest of the build and the audit: none of its
    # threads may write under its old epoch after b1 took over.
    _, verdict = finish_and_audit(cluster, build_id, ids, ran, "b1", "b1")
    assert cluster.coordinators["p1"].alive
    assert late_writes(verdict, cluster.keys, epoch1, takeover.epoch) == [], \
        "the wedged primary wrote under its old epoch after the backup took over"


def test_flapping_primary_loses_no_task(make_cluster, tmp_path):
    cluster = make_cluster(agents=3, backups=1, cores=2, failback_delay=0.5, grace=4)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 40, 1.0)
    build_id = submit(cluster, spec)
    for _ in range(3):
        cluster.coordinators["p1"].kill()
        cluster.wait_leader("b1", timeout=20)
        cluster.add_coordinator("p1", "primary")
        cluster.wait_leader("p1", timeout=30)
    finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")


def test_planned_switchover_and_back_mid_build_runs_no_task_twice(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=1, cores=2)
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 16, 0.5)
    build_id = submit(cluster, spec)
    wait_until(lambda: done_count(cluster, build_id, "p1") >= 2, 60, message="2 tasks done")
    epoch1 = cluster.leader().epoch
    cluster.api("p1").switchover()
    cluster.wait_leader("b1", timeout=10)
    cluster.wait_agents(2, timeout=10, coordinator="b1")
    before = done_count(cluster, build_id, "b1")
    wait_until(lambda: done_count(cluster, build_id, "b1") > before, 60, message="progress under b1")
    # A planned switchover is not undone by the handback rule.
    assert cluster.leader().name == "b1"
    cluster.api("b1").switchover()
    cluster.wait_leader("p1", timeout=10)
    assert cluster.leader().epoch > epoch1
    finish_and_audit(cluster, build_id, ids, ran, "p1", "p1")
    assert set(ran_counts(ran).values()) == {1}, "a planned handover runs no task again"
    switchovers = [e for e in events(cluster, "p1") if e["type"] == "switchover"]
    assert {e["coordinator"] for e in switchovers} == {"p1", "b1"}


def test_selected_backup_is_deselected_and_the_clock_survives_a_primary_restart(make_cluster):
    cluster = make_cluster(agents=0, backups=2, cores=1)
    api = cluster.api("p1")
    api.request("PUT", "/api/v1/settings", {"deselect_after": 8})
    assert api.status()["selected_backup"] == "b1"
    cluster.coordinators["b1"].kill()
    wait_until(lambda: cluster.etcd().get(cluster.keys.coordinator("b1"))[0] is None, 10,
               message="b1's registration to expire")
    gone_at = time.time()
    epoch = cluster.leader().epoch
    cluster.restart_coordinator("p1")
    wait_until(lambda: (lambda l: l and l.name == "p1" and l.epoch != epoch)(cluster.leader()), 20,
               message="the restarted p1 to lead")
    cluster.wait_web("p1")
    relead_at = time.time()
    status = wait_until(lambda: (lambda s: s if s["selected_backup"] is None else None)(cluster.api("p1").status()),
                        30, message="b1 deselected")
    deselections = [e for e in status["events"] if e["type"] == "deselection"]
    assert len(deselections) == 1
    at = deselections[0]["time"]
    assert at >= gone_at + 8 - 1.5, "deselected before deselect_after had passed"
    # Had the restart reset the clock, deselection would come 8 s after p1 led again.
    assert at < relead_at + 8 - 1, "the deselection clock restarted with the primary"
    assert state_of(cluster, "b2").get("acting") is False


def test_a_new_backup_is_listed_and_selectable_at_once(make_cluster):
    cluster = make_cluster(agents=0, backups=0)
    started = time.monotonic()
    cluster.add_coordinator("b7", "backup")
    wait_until(lambda: "b7" in [c["name"] for c in cluster.api("p1").status()["coordinators"]], 10,
               message="b7 in the primary's list")
    print(f"b7 listed by p1 {time.monotonic() - started:.2f} s after its process was started")
    cluster.api("p1").select_backup("b7")
    assert cluster.api("p1").status()["selected_backup"] == "b7"


def test_builds_submitted_while_the_backup_serves_complete_and_survive_the_handback(make_cluster, tmp_path):
    """Builds are work, not changes (docs/design.md section 1): with the primary SIGKILLed, the
    serving backup takes builds through the API and the CLI and runs them; settings stay
    primary-only; after the handback the builds' records are as the backup left them."""
    cluster = make_cluster(agents=2, backups=1, cores=2, failback_delay=1.0, grace=4)
    cluster.wait_agents(2, timeout=30, coordinator="p1")
    cluster.coordinators["p1"].kill()
    cluster.wait_leader("b1", timeout=20)
    cluster.wait_agents(2, timeout=20, coordinator="b1")
    ran = tmp_path / "ran.log"
    ids, spec = sleepy_build(ran, 6, 0.5, name="outage")
    build_id = submit(cluster, spec, via="b1")
    with pytest.raises(ApiError) as refused:
        cluster.api("b1").select_backup(None)
    assert refused.value.status == 403 and refused.value.body["coordinator"] == "p1"
    cli_ran = tmp_path / "cli-ran.log"
    cli_ids, cli_spec = sleepy_build(cli_ran, 3, 0.2, name="bycli")
    spec_file = tmp_path / "build.json"
    spec_file.write_text(json.dumps(cli_spec))
    waited = baton_cli(cluster, "build", "submit", str(spec_file), "--wait", "--json")
    assert waited.returncode == 0, waited.stderr
    cli_build = json.loads(waited.stdout)
    assert cli_build["state"] == "done"
    build = wait_build(cluster, build_id, via="b1")
    assert build["state"] == "done"
    assert ran_counts(ran) == {t: 1 for t in ids} and ran_counts(cli_ran) == {t: 1 for t in cli_ids}
    before = {b: cluster.api("b1").build(b) for b in (build_id, cli_build["id"])}

    cluster.add_coordinator("p1", "primary")
    cluster.wait_leader("p1", timeout=30)
    cluster.wait_agents(2, timeout=30, coordinator="p1")
    for b, seen in before.items():
        after = cluster.api("p1").build(b)
        assert (after["state"], after["tasks"]) == (seen["state"], seen["tasks"]), b
    assert_exactly_once(cluster, build_id, ids)
    assert_exactly_once(cluster, cli_build["id"], cli_ids)
