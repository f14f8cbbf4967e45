"""A compile job that reaches a helper before the helper's Lend of its grant
(agent/helper.py Grants.slot): the leader sends the initiator its grants and
the agent its Lend on two streams in no order. All real: the Helper service on
its gRPC server, gcc, and the initiator's JobServer, whose {"local": why} is
what `baton cc` compiles locally on.

The job waits, bounded, for the Lend while its grant's epoch is not older than
the newest the agent knows; an older epoch, an Unlend, a new stream or a newer
leader epoch refuse it at once; only a few jobs wait at once, so waiters never
hold every thread of the server."""
from __future__ import annotations

import contextlib
import shutil
from concurrent import futures

import grpc
import pytest

from agent.compile_job import compiler_identity
from agent.helper import GRANT_WAIT, Grants, HelperServer, Refused
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc
from tests.harness.cores import OneGrant, job_through_initiator
from tests.harness.wait import wait_until

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")

SOURCE = b"int f(void) { return 42; }\n"
LONG = 120.0   # a bound no test outlives: what ends these waits is an event, never the bound
RPC = 30.0     # each call's deadline, well under LONG: a job left waiting out LONG fails its test


@pytest.fixture
def serve():
    """serve(grants, workers=4) -> (the HelperServer, a HelperStub to it); stopped after the test."""
    made = []

    def start(grants: Grants, workers: int = 4):
        server = HelperServer("127.0.0.1:0", grants, lambda: grants.newest_epoch or None, workers=workers)
        server.start()
        channel = grpc.insecure_channel(server.address("unused"))
        made.append((server, channel))
        return server, compile_pb2_grpc.HelperStub(channel)

    yield start
    for server, channel in made:
        channel.close()
        server.stop()


def job(tmp_path, grant: str, epoch: int = 5) -> pb.CompileRequest:
    (tmp_path / "a.c").write_bytes(SOURCE)
    return pb.CompileRequest(grant=grant, epoch=epoch, compiler="gcc", compiler_identity=compiler_identity("gcc"),
                             args=["-O2"], source="a.c", cwd=str(tmp_path),
                             files=[pb.SourceFile(path=str(tmp_path / "a.c"), content=SOURCE)])


def through_initiator(tmp_path, server: HelperServer, grant: str, epoch: int = 5) -> dict:
    """A gcc job of `baton cc` through the initiator's JobServer, holding `grant`."""
    return job_through_initiator(tmp_path, OneGrant(server.address("unused"), grant=grant, epoch=epoch, slots=1))


def in_background(call):
    """call() on a thread; the future of its result."""
    pool = futures.ThreadPoolExecutor(1)
    done = pool.submit(call)
    pool.shutdown(wait=False)
    return done


def test_a_job_that_comes_before_its_lend_runs_on_the_helper_once_the_lend_comes(serve, tmp_path):
    grants = Grants()   # the agent's bound (GRANT_WAIT)
    grants.follow(5)
    server, _ = serve(grants)
    reply = in_background(lambda: through_initiator(tmp_path, server, "g1"))
    wait_until(lambda: grants.waiting() == 1 or reply.done(), 30, message="the job waiting for its Lend")
    grants.lend("g1", 1, 5)   # the Lend, after the job
    assert reply.result(RPC) == {"helper": "a1", "exit_code": 0, "core": 0}
    assert grants.waiting() == 0


def test_a_job_whose_lend_never_comes_is_refused_after_the_bound_and_compiles_at_the_initiator(serve, tmp_path):
    grants = Grants()
    grants.follow(5)
    server, _ = serve(grants)
    reply = through_initiator(tmp_path, server, "g1")
    assert reply == {"local": "helper a1 refused: this helper holds no such grant"}
    assert grants.waiting() == 0 and GRANT_WAIT <= 1.0


def test_a_job_of_a_grant_older_than_the_newest_epoch_is_refused_at_once(serve, tmp_path):
    grants = Grants(wait=LONG)
    grants.lend("g6", 1, 6)   # the agent heard of epoch 6 from a Lend; the job's grant is of 5
    server, stub = serve(grants)
    reply = stub.Compile(job(tmp_path, "g5", epoch=5), timeout=RPC)
    assert reply.refused == "the grant's epoch 5 is older than the leader's 6"
    assert through_initiator(tmp_path, server, "g5", epoch=5) == {
        "local": "helper a1 refused: the grant's epoch 5 is older than the leader's 6"}


def test_a_job_of_a_grant_already_unlent_is_refused_at_once(serve, tmp_path):
    grants = Grants(wait=LONG)
    grants.lend("g1", 1, 5)
    grants.unlend("g1")   # the build gave the core back before its job reached the helper
    _, stub = serve(grants)
    assert stub.Compile(job(tmp_path, "g1"), timeout=RPC).refused == \
        "this helper holds no such grant: the leader ended it (Unlend)"


@pytest.mark.parametrize("event", ["new stream", "newer epoch", "unlend"])
def test_a_new_stream_a_newer_epoch_or_an_unlend_ends_the_wait_at_once(serve, tmp_path, event):
    grants = Grants(wait=LONG)
    grants.follow(5)
    _, stub = serve(grants)
    held = contextlib.ExitStack()
    if event == "unlend":   # a job waiting for a busy slot of a grant that ends
        grants.lend("g1", 1, 5)
        held.enter_context(grants.slot("g1", 5))
    reply = stub.Compile.future(job(tmp_path, "g1"), timeout=RPC)
    wait_until(lambda: grants.waiting() == 1, 30, message="the job waiting for its Lend")
    if event == "new stream":   # the agent's stream ended and it opened another: the Lend cannot come
        grants.new_stream()
        expected = "this helper holds no such grant: its stream to the leader ended meanwhile"
    elif event == "newer epoch":   # the agent follows a new leader (its leader key)
        grants.follow(6)
        expected = "the grant's epoch 5 is older than the leader's 6"
    else:
        grants.unlend("g1")
        expected = "this helper holds no such grant: the leader ended it (Unlend)"
    assert reply.result().refused == expected
    assert grants.waiting() == 0
    held.close()


def test_waiting_jobs_past_the_limit_are_refused_at_once_and_never_starve_held_grants(serve, tmp_path):
    grants = Grants(wait=LONG, max_waiting=2)
    grants.follow(5)
    _, stub = serve(grants, workers=3)   # as an agent of one core: cores + 2 waiters
    waiting = [stub.Compile.future(job(tmp_path, f"early{i}"), timeout=RPC) for i in range(2)]
    wait_until(lambda: grants.waiting() == 2, 30, message="two jobs waiting")
    more = [stub.Compile.future(job(tmp_path, f"late{i}"), timeout=RPC) for i in range(3)]
    assert [f.result().refused for f in more] == ["this helper holds no such grant (and 2 jobs wait already)"] * 3
    grants.lend("held", 1, 5)
    reply = stub.Compile(job(tmp_path, "held"), timeout=RPC)   # a thread is left for it
    assert (reply.refused, reply.exit_code) == ("", 0) and reply.object
    for i in range(2):
        grants.lend(f"early{i}", 1, 5)
    assert [(f.result().refused, f.result().exit_code) for f in waiting] == [("", 0), ("", 0)]


def test_the_bounds_are_checked():
    with pytest.raises(ValueError, match="cannot be negative"):
        Grants(wait=-1)
    with pytest.raises(ValueError, match="cannot be negative"):
        Grants(max_waiting=-1)
    grants = Grants(wait=LONG, max_waiting=0)   # no waiting at all: refused at once
    with pytest.raises(Refused, match="no such grant"):
        with grants.slot("g", 1):
            pass
