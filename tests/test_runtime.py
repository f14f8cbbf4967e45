"""The runtime against a real etcd and real gRPC streams.

A `StubAgent` speaks the agent protocol through the generated client stub
(real gRPC on 127.0.0.1) and registers presence the way agents do
(agents/<name> with a lease), so these tests see what an agent would see.

(Over 400 lines: the runtime against real agents' streams and a real etcd shares
one set of fixtures.)
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent import futures

import grpc
import pytest

from cluster.keepalive import SERVER_OPTIONS

from coordinator.config import Timings
from bench.sync_service import add_to_server
from cluster.keys import decode, encode
from cluster.protocol import agent_pb2 as pb
from cluster.protocol import unbatched
from cluster.protocol import agent_pb2_grpc
from coordinator.runtime import dispatcher as dispatcher_module
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from lease.election import Election
from lease.session import Session
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

TOKEN = "s3cret"


class Leadership:
    """A real Session + Election; `epoch` is the leader key's create revision."""

    def __init__(self, etcd, keys):
        self.etcd, self.keys = etcd, keys
        self.session = Session(etcd, ttl=10, healthy=lambda: True).start()
        self.election = Election(etcd, keys.leader, self.session)
        assert self.election.campaign(encode({"name": "c1"}))

    @property
    def epoch(self) -> int:
        return self.election.epoch

    def renew(self) -> int:
        """Resign and campaign again: a new epoch, as after a failover."""
        self.election.resign()
        assert self.election.campaign(encode({"name": "c1"}))
        return self.epoch

    def close(self):
        self.election.resign()
        self.session.close()


class StubAgent:
    """One agent stream driven by the test."""

    def __init__(self, etcd, keys, address, name, epoch, cores=2, token=TOKEN, running=(), results=(),
                 present=True, compiling=0):
        self.etcd, self.keys, self.name, self.epoch = etcd, keys, name, epoch
        if present:
            self.lease = etcd.lease_grant(30)
            etcd.put(keys.agent(name), encode({"name": name, "cores": cores}), lease=self.lease)
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue = queue.Queue()
        self.requests.put(pb.AgentMessage(epoch=epoch, hello=pb.Hello(
            name=name, host="localhost", cores=cores, running=list(running), results=list(results),
            compiling=compiling)))
        metadata = [("authorization", f"Bearer {token}")] if token else []
        self.call = agent_pb2_grpc.AgentServiceStub(self.channel).Connect(
            iter(self.requests.get, None), metadata=metadata)
        self.messages: list[pb.CoordinatorMessage] = []   # one per body, Batches unpacked
        self.received: list[pb.CoordinatorMessage] = []   # as they came off the stream
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for message in self.call:
                self.received.append(message)
                self.messages.extend(unbatched(message))
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def of(self, kind):
        return [getattr(m, kind) for m in list(self.messages) if m.WhichOneof("body") == kind]

    def wait(self, kind, count=1, timeout=15):
        return wait_until(lambda: len(self.of(kind)) >= count and self.of(kind), timeout,
                          message=f"{self.name}: {count} {kind} message(s)")[count - 1]

    def assignments(self):
        return [(a.task.build_id, a.task.task_id, a.task.attempt) for a in self.of("assign")]

    def send_result(self, ref, exit_code=0, error="", epoch=None):
        self.requests.put(pb.AgentMessage(epoch=self.epoch if epoch is None else epoch, result=pb.TaskResult(
            task=pb.TaskRef(build_id=ref[0], task_id=ref[1], attempt=ref[2]), exit_code=exit_code,
            duration=0.01, output_tail=b"ok\n", error=error)))

    def acks(self):
        return [((a.task.build_id, a.task.task_id, a.task.attempt), a.recorded) for a in self.of("ack")]

    def wait_ended(self, timeout=15):
        assert self.ended.wait(timeout), f"{self.name}: stream did not end"
        return self.error

    def close(self):
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def leadership(etcd, keys):
    lead = Leadership(etcd, keys)
    yield lead
    lead.close()


@pytest.fixture(params=["sync", "aio"])
def farm(request, etcd, keys, leadership):
    """A started runtime served on a real gRPC server (the threaded one of
    bench/sync_service.py, or AioAgentServer, the daemon's); yields a helper."""
    lost = []
    runtime = Runtime(etcd, keys, "c1", Timings(ttl=2, grace=1.5), agent_token=TOKEN,
                      on_not_leader=lambda: lost.append(1))
    port = free_port()
    if request.param == "aio":
        server = AioAgentServer(runtime, f"127.0.0.1:{port}")
        server.start()
    else:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=SERVER_OPTIONS)
        add_to_server(runtime, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
    runtime.start(leadership.epoch)
    agents: list[StubAgent] = []

    class Farm:
        address = f"127.0.0.1:{port}"

        def __init__(self):
            self.runtime, self.lost = runtime, lost

        def agent(self, name, epoch=None, **kw):
            a = StubAgent(etcd, keys, self.address, name, leadership.epoch if epoch is None else epoch, **kw)
            agents.append(a)
            return a

    yield Farm()
    for a in agents:
        a.close()
    runtime.stop("test over")
    server.stop(None)


def submit(etcd, keys, build_id, tasks):
    """What the web API does: one put of the whole spec."""
    spec = {"id": build_id, "name": build_id, "submitted": time.time(), "user": "test",
            "tasks": [dict({"cmd": "true", "deps": [], "timeout": 0, "env": {}}, **t) for t in tasks]}
    etcd.put(keys.build(build_id), encode(spec))


def runtime_agents(etcd, keys):
    """The agents the leader lists in its runtime key."""
    return sorted((decode(etcd.get(keys.runtime)[0]) or {"agents": {}})["agents"])


def record(etcd, keys, build_id, task_id):
    return decode(etcd.get(keys.task(build_id, task_id))[0])


def status(etcd, keys, build_id):
    return decode(etcd.get(keys.status_of_build(build_id))[0]) or {}


def test_assignment_is_durable_before_it_is_sent_and_the_ack_after_the_result(etcd, keys, farm):
    a1 = farm.agent("a1")
    assert a1.wait("welcome").coordinator == "c1"
    submit(etcd, keys, "b1", [{"id": "t1", "cmd": "echo hi", "env": {"X": "1"}}])
    assign = a1.wait("assign")
    assert (assign.task.build_id, assign.task.task_id, assign.task.attempt) == ("b1", "t1", 1)
    assert assign.cmd == "echo hi" and dict(assign.env) == {"X": "1"}
    assert all(m.epoch == farm.runtime.epoch for m in a1.messages)
    # Durable before the agent heard of it.
    rec = record(etcd, keys, "b1", "t1")
    assert rec["state"] == "running" and rec["attempt"] == 1 and rec["agent"] == "a1"
    a1.send_result(("b1", "t1", 1))
    ack = a1.wait("ack")
    assert ack.recorded and ack.task.task_id == "t1"
    rec = record(etcd, keys, "b1", "t1")
    assert rec["state"] == "done" and rec["result"]["exit_code"] == 0 and rec["result"]["output_tail"] == "ok\n"
    st = wait_until(lambda: status(etcd, keys, "b1").get("state") == "done" and status(etcd, keys, "b1"), 10)
    assert st["total"] == 1 and st["done"] == 1 and st["started"] and st["finished"]
    runtime_view = wait_until(lambda: decode(etcd.get(keys.runtime)[0]), 10)
    assert runtime_view["coordinator"] == "c1" and runtime_view["epoch"] == farm.runtime.epoch
    assert wait_until(lambda: farm.runtime.stats()["tasks_dispatched"] == 1, 5)


def test_stale_epoch_is_refused(farm, leadership):
    a1 = farm.agent("a1", epoch=leadership.epoch - 1)
    err = a1.wait_ended()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == f"stale epoch {leadership.epoch - 1}; the leader's epoch is {leadership.epoch}"


def test_a_later_message_with_another_epoch_ends_the_stream(farm, leadership):
    a1 = farm.agent("a1")
    a1.wait("welcome")
    a1.send_result(("b", "t", 1), epoch=leadership.epoch + 7)
    err = a1.wait_ended()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "stale epoch" in err.details()


def test_missing_or_wrong_token_is_refused(farm):
    for token in (None, "wrong"):
        agent = farm.agent(f"a-{token}", token=token)
        err = agent.wait_ended()
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert agent.of("welcome") == []


def test_not_started_runtime_refuses_with_not_leader(etcd, keys, farm):
    farm.runtime.stop("test")
    a1 = farm.agent("a1")
    err = a1.wait_ended()
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and err.details().startswith("not leader")


def test_duplicate_and_stale_results_are_acked_unrecorded(etcd, keys, farm):
    a1 = farm.agent("a1", cores=2)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}])
    a1.wait("assign", 2)
    a1.send_result(("b1", "t1", 1))
    wait_until(lambda: (("b1", "t1", 1), True) in a1.acks(), 10)
    first = etcd.get(keys.task("b1", "t1"))[1].mod_revision
    a1.send_result(("b1", "t1", 1), exit_code=3)           # duplicate
    a1.send_result(("b1", "t2", 7), exit_code=3)           # not the current attempt
    a1.send_result(("nope", "t9", 1))                      # unknown build
    wait_until(lambda: len(a1.acks()) == 4, 10)
    assert a1.acks()[1:] == [(("b1", "t1", 1), False), (("b1", "t2", 7), False), (("nope", "t9", 1), False)]
    assert etcd.get(keys.task("b1", "t1"))[1].mod_revision == first
    assert record(etcd, keys, "b1", "t1")["result"]["exit_code"] == 0
    assert record(etcd, keys, "b1", "t2")["state"] == "running"


def test_lost_agent_tasks_run_again_with_the_next_attempt(etcd, keys, farm):
    a1 = farm.agent("a1", cores=1)
    a1.wait("welcome")
    submit(etcd, keys, "b1", [{"id": "t1"}])
    assert a1.wait("assign").task.attempt == 1
    a2 = farm.agent("a2", cores=1)
    a2.wait("welcome")
    etcd.delete(keys.agent("a1"))  # its lease expired: the agent is lost
    assign = a2.wait("assign")
    assert (assign.task.task_id, assign.task.attempt) == ("t1", 2)
    rec = record(etcd, keys, "b1", "t1")
    assert rec["agent"] == "a2" and rec["attempt"] == 2
    assert a1.wait("cancel").task.attempt == 1
    a1.send_result(("b1", "t1", 1))  # too late: attempt 1 is not current
    wait_until(lambda: (("b1", "t1", 1), False) in a1.acks(), 10)
    a2.send_result(("b1", "t1", 2))
    wait_until(lambda: (("b1", "t1", 2), True) in a2.acks(), 10)
    assert record(etcd, keys, "b1", "t1")["result"]["agent"] == "a2"


def test_dependencies_run_in_order(etcd, keys, farm):
    a1 = farm.agent("a1", cores=4)
    submit(etcd, keys, "b1", [{"id": "link", "deps": ["c1", "c2"]}, {"id": "c1"}, {"id": "c2"},
                              {"id": "pkg", "deps": ["link"]}])
    a1.wait("assign", 2)
    assert sorted(a1.assignments()) == [("b1", "c1", 1), ("b1", "c2", 1)]
    a1.send_result(("b1", "c1", 1))
    wait_until(lambda: len(a1.acks()) == 1, 10)
    assert len(a1.assignments()) == 2  # link still waits for c2
    a1.send_result(("b1", "c2", 1))
    assert a1.wait("assign", 3).task.task_id == "link"
    a1.send_result(("b1", "link", 1))
    assert a1.wait("assign", 4).task.task_id == "pkg"
    a1.send_result(("b1", "pkg", 1))
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 10)


def test_a_released_dependant_is_marked_running_in_its_dependency_results_transaction(etcd, keys, farm):
    """The chain's next link needs no second etcd round trip: its running
    record commits with the result that releases it (never before it), on
    the agent that ran the dependency, and its Assignment follows the ack."""
    a1 = farm.agent("a1", cores=1)
    a2 = farm.agent("a2", cores=2)
    for a in (a1, a2):
        a.wait("welcome")
    submit(etcd, keys, "b1", [{"id": "compile"}, {"id": "link", "deps": ["compile"]}])
    ran_compile = wait_until(lambda: next((a for a in (a1, a2) if a.assignments()), None), 10)
    ran_compile.send_result(("b1", "compile", 1))
    assign = ran_compile.wait("assign", 2)
    assert assign.task.task_id == "link" and assign.task.attempt == 1
    kinds = [m.WhichOneof("body") for m in ran_compile.messages]
    assert kinds.index("ack") < len(kinds) - 1 - kinds[::-1].index("assign")  # ack, then the assignment
    compile_meta = etcd.get(keys.task("b1", "compile"))[1]
    link_value, link_meta = etcd.get(keys.task("b1", "link"))
    assert decode(link_value)["state"] == "running" and decode(link_value)["agent"] == ran_compile.name
    assert link_meta.mod_revision == compile_meta.mod_revision  # one transaction
    assert farm.runtime.stats()["placed_early"] == 1
    ran_compile.send_result(("b1", "link", 1))
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 10)


def test_the_ack_and_the_assignment_it_released_travel_in_one_message(etcd, keys, farm, request):
    if "aio" not in request.node.callspec.id:
        pytest.skip("only the asyncio server (what the daemon serves) batches")
    a1 = farm.agent("a1", cores=1)
    a1.wait("welcome")
    submit(etcd, keys, "b1", [{"id": "compile"}, {"id": "link", "deps": ["compile"]}])
    a1.wait("assign")
    a1.send_result(("b1", "compile", 1))
    a1.wait("assign", 2)
    batch = next(m for m in a1.received if m.WhichOneof("body") == "batch")
    assert [m.WhichOneof("body") for m in batch.batch.messages] == ["ack", "assign"]
    assert batch.epoch == farm.runtime.epoch and all(m.epoch == batch.epoch for m in batch.batch.messages)


def test_a_failed_result_releases_nothing_early(etcd, keys, farm):
    a1 = farm.agent("a1", cores=2)
    submit(etcd, keys, "b1", [{"id": "compile"}, {"id": "link", "deps": ["compile"]}])
    a1.wait("assign")
    a1.send_result(("b1", "compile", 1), exit_code=1)
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "failed", 10)
    assert a1.assignments() == [("b1", "compile", 1)]
    assert farm.runtime.stats()["released_early"] == 0


def test_a_failed_task_fails_the_build_and_its_dependants_never_run(etcd, keys, farm):
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "compile"}, {"id": "link", "deps": ["compile"]},
                              {"id": "test", "deps": ["link"]}, {"id": "docs"}])
    a1.wait("assign")
    first = a1.assignments()[0]
    a1.send_result(first, exit_code=2 if first[1] == "compile" else 0)
    a1.wait("assign", 2)
    second = a1.assignments()[1]
    a1.send_result(second, exit_code=2 if second[1] == "compile" else 0)
    st = wait_until(lambda: status(etcd, keys, "b1").get("state") == "failed" and status(etcd, keys, "b1"), 10)
    assert st["total"] == 4 and st["done"] == 1 and st["failed"] == 3 and st["finished"]
    assert {a[1] for a in a1.assignments()} == {"compile", "docs"}
    assert record(etcd, keys, "b1", "compile")["result"]["exit_code"] == 2
    for dependant in ("link", "test"):
        rec = record(etcd, keys, "b1", dependant)
        assert rec["state"] == "failed" and rec["result"]["error"].startswith("not run: dependency")


def test_disabled_and_unsubscribed_agents_get_no_tasks(etcd, keys, farm):
    etcd.put(keys.agent_settings("a1"), encode({"disabled": True}))
    etcd.put(keys.settings, encode({"auto_subscribe": False}))
    etcd.put(keys.agent_settings("a2"), encode({"subscribed": False}))
    a1, a2 = farm.agent("a1"), farm.agent("a2")
    a1.wait("welcome"), a2.wait("welcome")

    def states():
        view = decode(etcd.get(keys.runtime)[0]) or {"agents": {}}
        return {name: a.get("state") for name, a in view["agents"].items()}

    # Settings and builds come through different watches: let the settings land first.
    wait_until(lambda: states() == {"a1": "disabled", "a2": "unsubscribed"}, 10)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "queued", 10)
    assert a1.of("assign") == [] and a2.of("assign") == []
    etcd.put(keys.agent_settings("a2"), encode({"subscribed": True}))
    assert a2.wait("assign").task.task_id == "t1"
    assert a1.of("assign") == []


def test_a_second_stream_under_a_live_agents_name_is_refused_and_the_first_keeps_its_work(etcd, keys, farm):
    # docs/design.md section 9: never a takeover (this test pinned the takeover before).
    old = farm.agent("a1")
    old.wait("welcome")
    impostor = farm.agent("a1", present=False)
    assert impostor.wait_ended().code() == grpc.StatusCode.ALREADY_EXISTS
    assert impostor.error.details() == "agent a1 is already connected"
    assert impostor.of("welcome") == []
    submit(etcd, keys, "b1", [{"id": "t1"}])
    old.wait("assign")
    ref = old.assignments()[0]
    old.send_result(ref)
    wait_until(lambda: (ref, True) in old.acks(), 10)
    assert record(etcd, keys, "b1", "t1")["result"]["agent"] == "a1"
    # Once the first stream is gone the agent may connect again at once.
    old.close()
    back = farm.agent("a1", present=False)
    back.wait("welcome")


@pytest.mark.parametrize("name", ["../../x", "a/b/c", "\u00e9", "x" * 10_000, "y" * (1_600 * 1024)],
                         ids=["dots", "slashes", "non-ascii", "10kB", "1.6MiB"])
def test_a_hello_with_a_name_that_breaks_the_rules_is_refused(etcd, keys, farm, name):
    bad = farm.agent(name, present=False)
    assert bad.wait_ended().code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be 1-63 letters" in bad.error.details() and len(bad.error.details()) < 200
    good = farm.agent("a1")
    good.wait("welcome")
    wait_until(lambda: runtime_agents(etcd, keys) == ["a1"], 10)


def test_restart_loads_unfinished_builds_and_keeps_tasks_of_agents_that_return(etcd, keys, farm, leadership):
    a1 = farm.agent("a1", cores=1)
    a2 = farm.agent("a2", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}, {"id": "t3"}])
    a1.wait("assign"), a2.wait("assign")
    on_a1, on_a2 = a1.assignments()[0], a2.assignments()[0]
    farm.runtime.stop("handover")
    assert a1.wait("goodbye").reason == "handover"
    a1.wait_ended(), a2.wait_ended()
    submit(etcd, keys, "b2", [{"id": "u1"}])  # submitted while nobody leads
    epoch = leadership.renew()
    farm.runtime.start(epoch)
    # a1 comes back in time, still running its task; a2 never returns.
    back = farm.agent("a1", epoch=epoch, cores=1, present=False,
                      running=[pb.TaskRef(build_id=on_a1[0], task_id=on_a1[1], attempt=on_a1[2])])
    back.wait("welcome")
    back.send_result(on_a1)
    wait_until(lambda: (on_a1, True) in back.acks(), 10)
    assert record(etcd, keys, *on_a1[:2])["state"] == "done"
    # a2's task runs again after the grace period, attempt 2; the rest runs too.
    done = {on_a1}

    def finish_what_was_assigned():
        for ref in back.assignments():
            if ref not in done:
                back.send_result(ref)
                done.add(ref)
        return len(done) == 4

    wait_until(finish_what_was_assigned, 30, message="every task of b1 and b2 assigned")
    assert (on_a2[0], on_a2[1], 2) in done
    assert ("b2", "u1", 1) in done
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 10)
    wait_until(lambda: status(etcd, keys, "b2").get("state") == "done", 10)
    assert record(etcd, keys, *on_a2[:2])["result"]["attempt"] == 2


def test_a_hello_is_welcomed_while_the_new_leader_loads_and_settled_after(etcd, keys, farm, leadership,
                                                                          monkeypatch):
    """A new leader welcomes at once: the move does not wait for its load (on a busy machine
    8-180 ms). What the Hello lists is checked once the load is done: a task the
    leader does not know is cancelled, the one it knows keeps running and its result counts."""
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    on_a1 = a1.wait("assign")
    farm.runtime.stop("handover")
    a1.wait_ended()
    epoch = leadership.renew()
    loading, release = threading.Event(), threading.Event()
    load = dispatcher_module.read_snapshot

    def held_load(kvs, k):
        loading.set()
        assert release.wait(15)
        return load(kvs, k)

    monkeypatch.setattr(dispatcher_module, "read_snapshot", held_load)
    starting = threading.Thread(target=farm.runtime.start, args=(epoch,))
    starting.start()
    try:
        assert loading.wait(15)
        back = farm.agent("a1", epoch=epoch, cores=1, present=False,
                          running=[on_a1.task, pb.TaskRef(build_id="b1", task_id="unknown", attempt=1)])
        assert back.wait("welcome").coordinator == "c1"
        assert back.of("cancel") == [] and not back.ended.is_set()
    finally:
        release.set()
        starting.join(15)
    assert back.wait("cancel").task.task_id == "unknown"
    back.send_result((on_a1.task.build_id, on_a1.task.task_id, on_a1.task.attempt))
    wait_until(lambda: back.acks() == [(("b1", "t1", 1), True)], 10)
    assert record(etcd, keys, "b1", "t1")["state"] == "done"
    assert back.of("assign") == []


def test_a_running_task_the_agent_no_longer_has_is_cancelled_or_rerun(etcd, keys, farm, leadership):
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    a1.wait("assign")
    a1.close()
    # Reconnects listing a task of an old attempt and not the current one.
    again = farm.agent("a1", cores=1, present=False,
                       running=[pb.TaskRef(build_id="b1", task_id="t1", attempt=9)])
    again.wait("welcome")
    assert again.wait("cancel").task.attempt == 9
    assert again.wait("assign").task.attempt == 2


def test_not_leader_stops_dispatching_and_tells_the_daemon(etcd, keys, farm, leadership):
    a1 = farm.agent("a1", cores=1)
    a1.wait("welcome")
    etcd.delete(keys.leader)  # someone else's epoch now (or none)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    wait_until(lambda: farm.lost == [1], 10)
    assert farm.runtime.epoch is None
    assert a1.of("assign") == []
    assert etcd.get(keys.task("b1", "t1"))[0] is None


def test_results_buffered_in_the_hello_are_recorded_once(etcd, keys, farm):
    a1 = farm.agent("a1", cores=2)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}])
    a1.wait("assign", 2)
    a1.close()  # the results are produced while the stream is down
    ref = lambda t, n: pb.TaskResult(task=pb.TaskRef(build_id="b1", task_id=t, attempt=n), exit_code=0,
                                     output_tail=b"buffered")
    again = farm.agent("a1", cores=2, present=False, results=[ref("t1", 1), ref("t2", 1), ref("t2", 5)])
    again.wait("welcome")
    wait_until(lambda: len(again.acks()) == 3, 10)
    assert sorted(again.acks()) == [(("b1", "t1", 1), True), (("b1", "t2", 1), True), (("b1", "t2", 5), False)]
    assert record(etcd, keys, "b1", "t2")["result"]["output_tail"] == "buffered"
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 10)
    assert again.of("assign") == []


def test_max_cores_per_build_limits_a_build_on_a_big_agent(etcd, keys, farm):
    etcd.put(keys.settings, encode({"max_cores_per_build": 1}))
    a1 = farm.agent("a1", cores=4)
    a1.wait("welcome")
    # Settings and builds come through different watches: let the settings land first.
    wait_until(lambda: farm.runtime._dispatcher.settings.max_cores_per_build == 1, 10)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}])
    submit(etcd, keys, "b2", [{"id": "u1"}])
    a1.wait("assign", 2)
    wait_until(lambda: status(etcd, keys, "b2").get("state") == "running", 10)
    assert sorted(a[0] for a in a1.assignments()) == ["b1", "b2"]  # one core each, not two for b1
    b1_ref = next(a for a in a1.assignments() if a[0] == "b1")
    a1.send_result(b1_ref)
    assert a1.wait("assign", 3).task.build_id == "b1"


@pytest.fixture
def announce_late(monkeypatch):
    """The successor is otherwise also named ANNOUNCE_SUCCESSOR_AFTER (1 s) after the start."""
    monkeypatch.setattr(dispatcher_module, "ANNOUNCE_SUCCESSOR_AFTER", 60.0)


def test_the_successor_is_named_once_every_present_agent_has_moved_here(announce_late, etcd, keys, farm):
    """Agents open a standby stream to the successor when they hear its name: not
    while others are still moving here, which that work would slow down."""
    etcd.put(keys.agent("a2"), encode({"name": "a2", "cores": 1}))  # present, not connected yet
    wait_until(lambda: (d := farm.runtime._dispatcher) is not None and "a2" in d.agents and d.agents["a2"].present,
               10, message="the runtime sees a2 present")
    farm.runtime.announce_successor(("b1", "127.0.0.1:7999"))
    a1 = farm.agent("a1", cores=1)
    a1.wait("welcome")
    submit(etcd, keys, "b1", [{"id": "t1"}])
    a1.wait("assign")  # the dispatcher has taken the hello and the announcement by now
    assert a1.of("successor") == [], "named while a2 has not moved here yet"
    a2 = farm.agent("a2", cores=1)
    a2.wait("welcome")
    for agent in (a1, a2):
        successor = agent.wait("successor")
        assert (successor.name, successor.grpc) == ("b1", "127.0.0.1:7999")


def test_a_planned_handover_resigns_after_the_writes_land_and_before_the_goodbyes(etcd, keys, farm):
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    ref = a1.wait("assign").task
    a1.send_result((ref.build_id, ref.task_id, ref.attempt))
    a1.wait("ack")
    dispatcher = farm.runtime._dispatcher
    seen = {}

    def resign():
        seen["recorded"] = record(etcd, keys, "b1", "t1")["state"]
        seen["stream open"] = not dispatcher.agents["a1"].stream.closed

    farm.runtime.stop("switchover to b1", successor=("b1", "127.0.0.1:7999"), before_goodbye=resign)
    assert seen == {"recorded": "done", "stream open": True}
    assert a1.wait("goodbye").reason == "switchover to b1"
    assert a1.wait("successor").name == "b1", "a planned handover names the successor at once"
    farm.runtime.stop("again", before_goodbye=lambda: seen.update(again=True))
    assert seen["again"], "the step runs also when the runtime is not started"


def test_recorded_results_fill_the_duration_histogram_across_epochs(etcd, keys, farm, leadership):
    a1 = farm.agent("a1", cores=2)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}])
    a1.wait("assign", 2)
    a1.send_result(("b1", "t1", 1))
    a1.send_result(("b1", "t2", 1), exit_code=2)
    wait_until(lambda: len(a1.acks()) == 2, 10)
    a1.send_result(("b1", "t1", 1))  # a duplicate is not a second result
    wait_until(lambda: len(a1.acks()) == 3, 10)
    stats = farm.runtime.stats()
    durations = stats["histograms"]["task_duration_seconds"]
    assert stats["tasks_finished"] == 2 and durations["count"] == 2
    assert durations["sum"] == pytest.approx(0.02)
    assert dict((le, n) for le, n in durations["buckets"])[0.1] == 2  # 0.01 s each, in the first bucket
    txns = stats["histograms"]["etcd_txn_seconds"]
    assert txns["count"] >= 3 and txns["buckets"][-1][1] <= txns["count"]  # running records and results
    # A new epoch (a new Dispatcher and GroupCommit): the counts go on, never back.
    farm.runtime.stop("new epoch")
    farm.runtime.start(leadership.renew())
    assert farm.runtime.stats()["histograms"]["task_duration_seconds"]["count"] == 2
    assert farm.runtime.stats()["histograms"]["etcd_txn_seconds"]["count"] >= txns["count"]


def test_histogram_buckets_are_cumulative_with_their_upper_bound_included():
    from coordinator.runtime.metrics import Histogram

    h = Histogram((1, 5))
    for value in (0.5, 1, 3, 5, 60):
        h.observe(value)
    assert h.to_state() == {"buckets": [[1, 2], [5, 4]], "sum": 69.5, "count": 5}
