"""The records of `baton run` builds (coordinator/runtime/run_records.py), against a
real etcd and real gRPC: an initiator's Cores stream reports the start, the jobs
and the end; the leader writes them fenced, acknowledges only what is durable, a
deposed leader's writes are refused, a new leader takes the reports sent again,
and a build whose initiator never comes back ends failed."""
from __future__ import annotations

import grpc
import pytest

from cluster.keys import decode, encode
from cluster.protocol import compile_pb2 as cpb
from cluster.records import JobRecord
from coordinator.config import Timings
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from lease.election import Election
from tests.harness.ports import free_port
from tests.harness.wait import wait_until
from tests.test_lending import Initiator
from tests.test_runtime import TOKEN, leadership  # noqa: F401 - leadership: a fixture

START = cpb.RunStart(command=["make", "-j4"], host="builder", started=1000.0)


def job(seq: int, helper: str = "a1", code: int = 0) -> cpb.JobReport:
    remote = helper != "local"
    return cpb.JobReport(seq=seq, source=f"/src/s{seq}.c", helper=helper, core=seq % 2 if remote else 0,
                         started=1000.0 + seq, finished=1000.5 + seq, exit_code=code, remote=remote,
                         why_local="" if remote else "no free helper core within 2 s", compiler="gcc")


class Reporter(Initiator):
    """One Cores.Want stream that reports, as `baton run` does (cli/run_report.py)."""

    def __init__(self, address: str, build: str):
        super().__init__(address, build, 0)

    def send(self, start=None, jobs=(), end=None):
        request = cpb.CoreRequest(build=self.build, cores=0, jobs=list(jobs))
        if start is not None:
            request.start.CopyFrom(start)
        if end is not None:
            request.end.CopyFrom(end)
        self.requests.put(request)

    def acked(self) -> set[int]:
        return {seq for r in list(self.replies) for seq in r.acked}

    def ended(self) -> bool:
        return any(r.ended for r in list(self.replies))


@pytest.fixture
def serve(etcd, keys, leadership):
    """(start, reporter): start(name) -> (runtime, address), a leading runtime on a real
    gRPC server; reporter(address) -> a Reporter whose first job is acknowledged."""
    made = []

    def start(name="c1", epoch=None, abandon=30.0):
        runtime = Runtime(etcd, keys, name, Timings(ttl=2, grace=1.5, run_abandon=abandon), agent_token=TOKEN)
        port = free_port()
        server = AioAgentServer(runtime, f"127.0.0.1:{port}")
        server.start()
        runtime.start(epoch or leadership.epoch)
        made.append((runtime, server))
        return runtime, f"127.0.0.1:{port}"

    opened = []

    def reporter(address, build="r1", first=(1,)):
        """A stream that reported the start and the jobs `first`, acknowledged."""
        run = Reporter(address, build)
        opened.append(run)
        run.send(start=START, jobs=[job(seq) for seq in first])
        wait_until(lambda: run.acked() == set(first), 10, message="the first jobs acknowledged")
        return run

    yield start, reporter
    for o in opened:
        o.close()
    for runtime, server in made:
        runtime.stop("test over")
        server.stop(None)


def jobs_in_etcd(etcd, keys, build) -> dict[int, JobRecord]:
    prefix = keys.build_jobs(build)
    return {r.seq: r for r in (JobRecord.parse(v) for v, _ in etcd.get_prefix(prefix)) if r is not None}


def status(etcd, keys, build) -> dict:
    return decode(etcd.get(keys.status_of_build(build))[0]) or {}


def test_a_run_build_and_its_jobs_are_recorded_fenced_and_acknowledged_once_durable(etcd, keys, serve, leadership):
    start, reporter = serve
    runtime, address = start()
    run = reporter(address)
    run.send(jobs=[job(2, "local")])
    wait_until(lambda: run.acked() == {1, 2}, 10, message="both jobs acknowledged")
    spec = decode(etcd.get(keys.build("r1"))[0])
    assert (spec["kind"], spec["name"], spec["host"], spec["command"]) == \
        ("run", "make -j4", "builder", ["make", "-j4"])
    recorded = jobs_in_etcd(etcd, keys, "r1")
    assert recorded[1].helper == "a1" and recorded[1].remote and recorded[1].core == 1
    assert recorded[2].helper == "local" and recorded[2].core is None and recorded[2].why_local
    assert {r.epoch for r in recorded.values()} == {leadership.epoch}
    assert {r.coordinator for r in recorded.values()} == {"c1"}
    wait_until(lambda: status(etcd, keys, "r1").get("total") == 2, 10, message="the running counts")
    assert status(etcd, keys, "r1")["state"] == "running"
    # The same job again (its ack was lost): acknowledged, still one record under its key.
    revision = etcd.get(keys.job("r1", 1))[1].mod_revision
    run.send(jobs=[job(1), job(3, code=1)])
    wait_until(lambda: 3 in run.acked(), 10)
    assert etcd.get(keys.job("r1", 1))[1].mod_revision == revision
    run.send(end=cpb.RunEnd(exit_code=2, wall=3.5, finished=1010.0, jobs=3, remote=2, failed=1))
    wait_until(run.ended, 10, message="the end acknowledged")
    final = status(etcd, keys, "r1")
    assert (final["state"], final["exit_code"], final["total"], final["failed"], final["remote"]) == \
        ("failed", 2, 3, 1, 2)
    assert "exited with 2" in final["reason"]


def test_a_deposed_leaders_job_writes_are_refused(etcd, keys, serve, leadership):
    start, reporter = serve
    runtime, address = start()
    run = reporter(address)
    # Another coordinator leads now (a new epoch); this runtime has not noticed yet.
    etcd.delete(keys.leader)
    other = Election(etcd, keys.leader, leadership.session)
    assert other.campaign(encode({"name": "c2"}))
    run.send(jobs=[job(2), job(3)])
    wait_until(lambda: runtime.epoch is None, 10, message="the fenced write failed and leading stopped")
    assert etcd.get(keys.job("r1", 2))[0] is None and etcd.get(keys.job("r1", 3))[0] is None
    assert run.acked() == {1}


def test_the_next_leader_records_the_reports_sent_again(etcd, keys, serve, leadership):
    start, reporter = serve
    first, address = start()
    reporter(address)
    first.stop("failover")
    epoch = leadership.renew()
    second, address2 = start("c2", epoch)
    # Everything not acknowledged, with the start, on the new stream (cli/run_report.py).
    again = reporter(address2, first=(2,))
    again.send(jobs=[job(3, "local")])
    again.send(end=cpb.RunEnd(exit_code=0, wall=2.0, finished=1005.0, jobs=3, remote=2, failed=0))
    wait_until(again.ended, 10, message="the end recorded by the next leader")
    recorded = jobs_in_etcd(etcd, keys, "r1")
    assert sorted(recorded) == [1, 2, 3]
    assert recorded[1].epoch < epoch and recorded[2].epoch == recorded[3].epoch == epoch
    assert status(etcd, keys, "r1")["state"] == "done"


def test_a_run_build_whose_initiator_never_comes_back_ends_failed(etcd, keys, serve):
    start, reporter = serve
    runtime, address = start(abandon=1.0)
    reporter(address).close()
    wait_until(lambda: status(etcd, keys, "r1").get("state") == "failed", 15, message="abandoned")
    final = status(etcd, keys, "r1")
    assert "not heard from for 1 s" in final["reason"] and final["total"] == 1


def test_a_run_build_cannot_take_the_id_of_a_task_build(etcd, keys, serve):
    start, reporter = serve
    runtime, address = start()
    etcd.put(keys.build("b1"), encode({"id": "b1", "name": "tasks", "tasks": [{"id": "t1", "cmd": "true"}]}))
    wait_until(lambda: "b1" in runtime._dispatcher.builds, 10)
    run = Reporter(address, "b1")
    run.send(start=START, jobs=[job(1)])
    wait_until(lambda: run.error is not None, 10)
    run.close()
    assert run.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not list(etcd.get_prefix(keys.build_jobs("b1")))
    assert decode(etcd.get(keys.build("b1"))[0])["name"] == "tasks"
