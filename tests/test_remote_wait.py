"""How long a compile of `baton run` waits for a free helper core (`--remote-wait`):
by default the cluster's lease ttl (docs/design.md section 8), so that a job started
as the leader dies waits out the election and goes to the backup's helpers."""
from __future__ import annotations

import json
import queue
import shutil

from cli.core_client import DEFAULT_REMOTE_WAIT, CoreClient, remote_wait
from cli.job_server import JobServer
from cli.parser import build_parser
from lease.client import EtcdConfig
from tests.harness.wait import wait_until


def test_the_default_is_the_lease_ttl_and_a_given_wait_wins():
    assert build_parser().parse_args(["run", "--", "make"]).remote_wait is None
    assert remote_wait(None, 4) == 4.0
    assert remote_wait(1.5, 4) == 1.5 and remote_wait(0.0, 4) == 0.0
    assert remote_wait(None, None) == remote_wait(None, 0) == DEFAULT_REMOTE_WAIT == 10.0


def test_the_initiator_waits_the_ttl_of_the_leaders_lease(etcd, etcd_url, keys, cluster_name):
    """Read from the leader key's lease, as the leader holds it (one read per leader)."""
    lease = etcd.lease_grant(3)
    etcd.put(keys.leader, json.dumps({"name": "c1", "role": "primary", "grpc": "127.0.0.1:1"}), lease=lease)
    cores = CoreClient(EtcdConfig.from_urls(etcd_url), cluster_name, "b1").start()
    given = CoreClient(EtcdConfig.from_urls(etcd_url), cluster_name, "b2", wait=1.0).start()
    try:
        wait_until(lambda: cores.wait == 3.0, timeout=10)
        wait_until(lambda: given._follower is not None and given._follower.current is not None, timeout=10)
        assert given.wait == 1.0
    finally:
        cores.stop()
        given.stop()
        etcd.lease_revoke(lease)


def test_a_build_that_never_reached_a_leader_neither_waits_out_the_remote_wait_nor_for_its_record(
        etcd, etcd_url, keys, cluster_name, tmp_path):
    """etcd answers, but no leader key: a job goes local after FIRST_LEADER_WAIT, not the remote
    wait (600 s here). Then a leader key whose coordinator never answers (a stale key): nobody
    can record the build, so finish() returns without waiting (600 s here) for the record.
    The waits given are failure bounds: the old code waited them out (pytest-timeout fails it)."""
    from cli.run_report import RunReport

    cores = CoreClient(EtcdConfig.from_urls(etcd_url), cluster_name, "b3", wait=600.0,
                       report=RunReport("b3", ["make"], str(tmp_path))).start()
    lease = etcd.lease_grant(30)
    try:
        assert cores.acquire(600.0) == (None, "no leader")
        etcd.put(keys.leader, json.dumps({"name": "c1", "role": "primary", "grpc": "127.0.0.1:1"}), lease=lease)
        wait_until(lambda: cores._seen_leader, timeout=30, message="the leader key seen")
        assert cores.finish(0, 1.0, {"jobs": 0, "remote": 0, "failed": 0}, timeout=600.0) is False
        assert not cores.reached
    finally:
        cores.stop()
        etcd.lease_revoke(lease)


def test_a_lowered_want_names_the_slots_its_jobs_use():
    """With the want, the initiator says which grants its jobs run on (compile.proto
    CoreRequest.busy), so the leader gives back idle slots first (coordinator/runtime/lending.py)."""
    cores = CoreClient(EtcdConfig.from_urls("http://127.0.0.1:9"), "default", "b4")   # never started
    cores._requests = queue.Queue()
    with cores._cond:
        cores._active, cores._peak, cores._busy = 2, 0, {"g-busy": 2, "g-idle": 0}
        cores._ask()
    request = cores._requests.get_nowait()
    assert request.cores == 2 and dict(request.busy) == {"g-busy": 2}


def test_a_job_taking_a_slot_after_a_lull_does_not_lower_the_want():
    """After a lull shorter than a tick (a link step), the next job must not send a lower want
    before it takes its slot: the leader would take back idle grants, maybe the one that job
    then runs on, and the burst that follows waits for new lends. Only the ticker lowers
    the want, after it stayed lower for a tick (issue 14: seen as 4 -> 1 at a build's tail)."""
    from cluster.protocol import compile_pb2 as pb

    cores = CoreClient(EtcdConfig.from_urls("http://127.0.0.1:9"), "default", "b5")   # never started
    cores._requests = queue.Queue()
    cores._settled.set()
    grants = [pb.Grant(agent=f"a{i}", helper="127.0.0.1:1", slots=1, grant=f"g{i}", epoch=5) for i in (1, 2)]
    cores._set_grants(grants, leaderless=False)
    with cores._cond:
        cores._sent, cores._active, cores._peak = 4, 0, 0   # the ticker saw no job at its last tick
    grant, slot, why = cores.acquire_core(0.0)
    assert grant is not None and why == ""
    assert cores._requests.empty() and cores._sent == 4
    # Raising it is at once: a fifth job in flight asks for five.
    with cores._cond:
        cores._active = 4
    cores.acquire_core(0.0)
    assert cores._requests.get_nowait().cores == 5


def test_a_job_that_goes_local_at_once_is_not_scanned(etcd_url, cluster_name, tmp_path, monkeypatch):
    """No leader for longer than the wait: a job compiles locally at once, and the initiator
    does not first scan it (a preprocessor run, which would write its dependency file)."""
    if shutil.which("gcc") is None:
        return
    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a.c").write_text("#include <stdio.h>\nint a(void) { return 1; }\n")
    cores = CoreClient(EtcdConfig.from_urls(etcd_url), cluster_name, "b1", wait=0.2).start()
    jobs = JobServer(str(tmp_path), cores, wait=0.2).start()
    try:
        wait_until(lambda: cores.local_at_once(0.2) == "no leader", timeout=10)
        answer = jobs.compile({"argv": ["gcc", "-MD", "-c", "a.c", "-o", "a.o"], "cwd": str(tmp_path), "env": {}})
        assert answer == {"local": "no leader"}
        assert not (tmp_path / "a.d").exists()
        assert (jobs.scan_cache.hits, jobs.scan_cache.misses) == (0, 0)
    finally:
        jobs.stop()
        cores.stop()
