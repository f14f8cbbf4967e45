"""The agent's Helper service (agent/helper.py) over real gRPC: a job under a
grant the agent holds compiles to the object a local compile makes; jobs
under unknown, stale or busy grants, or for another compiler, are refused."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading

import grpc
import pytest

from agent.compile_job import compiler_identity
from agent.helper import Grants, HelperServer, Refused
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


@pytest.fixture
def helper():
    grants = Grants()
    leader = {"epoch": 5}
    server = HelperServer("127.0.0.1:0", grants, lambda: leader["epoch"], workers=4)
    server.start()
    channel = grpc.insecure_channel(server.address("unused"))
    yield grants, leader, compile_pb2_grpc.HelperStub(channel)
    channel.close()
    server.stop()


def request(tmp_path, grant="g1", epoch=5, identity=None, source=b"int f(void) { return 42; }\n"):
    (tmp_path / "a.c").write_bytes(source)
    return pb.CompileRequest(grant=grant, epoch=epoch, compiler="gcc",
                             compiler_identity=identity or compiler_identity("gcc"), args=["-O2", "-g"],
                             source="a.c", cwd=str(tmp_path),
                             files=[pb.SourceFile(path=str(tmp_path / "a.c"), content=source)])


def test_a_job_under_a_held_grant_makes_the_local_object(helper, tmp_path):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    reply = stub.Compile(request(tmp_path), timeout=60)
    assert (reply.refused, reply.exit_code) == ("", 0)
    subprocess.run(["gcc", "-O2", "-g", "-c", "a.c", "-o", "local.o"], cwd=tmp_path, check=True)
    assert reply.object == (tmp_path / "local.o").read_bytes()


def test_a_compile_error_comes_back_with_the_compilers_exit_code(helper, tmp_path):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    reply = stub.Compile(request(tmp_path, source=b"int f(void) { return nope; }\n"), timeout=60)
    assert reply.refused == "" and reply.exit_code == 1 and b"nope" in reply.diagnostics and not reply.object


def test_jobs_without_a_held_grant_of_the_leaders_epoch_or_for_another_compiler_are_refused(helper, tmp_path):
    grants, leader, stub = helper
    assert "no such grant" in stub.Compile(request(tmp_path), timeout=30).refused
    grants.lend("g1", 1, 5)
    assert "different compiler" in stub.Compile(request(tmp_path, identity="0" * 64), timeout=30).refused
    assert "epoch" in stub.Compile(request(tmp_path, epoch=4), timeout=30).refused
    leader["epoch"] = 6   # a new leader: the old leader's grant takes no new jobs
    assert "older than the leader's 6" in stub.Compile(request(tmp_path), timeout=30).refused
    grants.lend("g2", 1, 6)
    grants.unlend("g2")
    assert "no such grant" in stub.Compile(request(tmp_path, grant="g2", epoch=6), timeout=30).refused


def test_a_grant_runs_at_most_its_slots_at_once():
    grants = Grants()
    grants.lend("g", 2, 3)
    held = threading.Event()
    release = threading.Event()

    def hold():
        with grants.slot("g", 3):
            held.set()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    held.wait(5)
    with pytest.raises(Refused, match="busy"):
        with grants.slot("g", 3, wait=0.05):
            pass
    release.set()
    for t in threads:
        t.join()
    with grants.slot("g", 3, wait=0.05):
        pass


def test_a_job_that_arrives_before_its_lend_waits_for_it():
    grants = Grants()
    timer = threading.Timer(0.05, grants.lend, ("g", 1, 2))
    timer.start()
    with grants.slot("g", 2, wait=10):
        pass
    timer.join()


def test_a_new_stream_ends_the_grants_and_counts_the_jobs_still_running_until_they_end():
    told = []
    grants = Grants(on_carried=told.append)
    grants.lend("g", 2, 3)
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        first.enter_context(grants.slot("g", 3))
        second.enter_context(grants.slot("g", 3))
        assert grants.new_stream() == 2
        assert grants.slots() == {}
        with pytest.raises(Refused, match="no such grant"):
            with grants.slot("g", 3, wait=0.01):
                pass
        grants.lend("h", 1, 3)   # the next stream's grant: its job is not an ended grant's
        with grants.slot("h", 3):
            pass
        assert told == []
        first.close()
        assert told == [1]
    assert told == [1, 0]
    assert grants.new_stream() == 0
