"""The leader lends helper cores to `baton run` builds (coordinator/runtime/lending.py),
against a real etcd and real gRPC: the Cores stream of an initiator, and agents'
streams (tests/test_runtime.StubAgent). One core budget per agent: lent cores
never run tasks, cores running tasks are never lent."""
from __future__ import annotations

import queue
import threading

import grpc
import pytest

from cluster.keys import encode
from cluster.protocol import agent_pb2 as pb
from cluster.protocol import compile_pb2 as cpb
from cluster.protocol import compile_pb2_grpc
from coordinator.config import Timings
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from tests.harness.ports import free_port
from tests.harness.wait import wait_until
from tests.test_runtime import TOKEN, StubAgent, leadership, submit  # noqa: F401 - leadership: a fixture


class Initiator:
    """One Cores.Want stream, as `baton run` holds it."""

    def __init__(self, address, build, cores, token=TOKEN):
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue = queue.Queue()
        self.requests.put(cpb.CoreRequest(build=build, cores=cores))
        self.build = build
        self.replies: list[cpb.CoreGrants] = []
        self.error = None
        self.call = compile_pb2_grpc.CoresStub(self.channel).Want(
            iter(self.requests.get, None), metadata=[("authorization", f"Bearer {token}")])
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for reply in self.call:
                self.replies.append(reply)
        except grpc.RpcError as exc:
            self.error = exc

    def want(self, cores, busy=None):
        self.requests.put(cpb.CoreRequest(build=self.build, cores=cores, busy=busy or {}))

    def slots(self) -> dict[str, int]:
        return {g.agent: g.slots for g in self.replies[-1].grants} if self.replies else {}

    def close(self):
        self.requests.put(None)
        self.channel.close()


@pytest.fixture
def farm(etcd, keys, leadership):
    runtime = Runtime(etcd, keys, "c1", Timings(ttl=2, grace=1.5), agent_token=TOKEN)
    port = free_port()
    server = AioAgentServer(runtime, f"127.0.0.1:{port}")
    server.start()
    runtime.start(leadership.epoch)
    opened = []

    class Farm:
        address = f"127.0.0.1:{port}"

        def agent(self, name, cores=2, helper=True, compiling=0):
            a = StubAgent(etcd, keys, self.address, name, leadership.epoch, cores=cores, present=False,
                          compiling=compiling)
            a.lease = etcd.lease_grant(30)
            etcd.put(keys.agent(name), encode({"name": name, "cores": cores,
                                                **({"helper": f"{name}:4000"} if helper else {})}), lease=a.lease)
            a.wait("welcome")
            opened.append(a)
            return a

        def initiator(self, build, cores, **kw):
            i = Initiator(self.address, build, cores, **kw)
            opened.append(i)
            return i

        @property
        def dispatcher(self):
            return runtime._dispatcher

    yield Farm()
    for o in opened:
        o.close()
    runtime.stop("test over")
    server.stop(None)


def lent_now(agent: StubAgent) -> dict[str, int]:
    """What the agent was told it lends: grant id -> slots (after every Lend/Unlend so far)."""
    held: dict[str, int] = {}
    for m in list(agent.messages):
        kind = m.WhichOneof("body")
        if kind == "lend":
            held[m.lend.grant] = m.lend.slots
        elif kind == "unlend":
            held.pop(m.unlend.grant, None)
    return held


def busy(agent: StubAgent) -> int:
    """Cores of the agent in use: tasks assigned and not yet reported, plus lent slots."""
    return len(agent.assignments()) - len(agent.acks()) + sum(lent_now(agent).values())


def test_lent_cores_run_no_tasks_and_cores_running_tasks_are_not_lent(etcd, keys, farm):
    a1, a2 = farm.agent("a1"), farm.agent("a2")
    submit(etcd, keys, "b1", [{"id": f"t{i}"} for i in range(3)])
    wait_until(lambda: len(a1.assignments()) + len(a2.assignments()) == 3, 15)
    run = farm.initiator("r1", 4)
    wait_until(lambda: sum(run.slots().values()) == 1, 15, message="the one free core lent")
    grant = run.replies[-1].grants[0]
    assert grant.helper == f"{grant.agent}:4000" and grant.epoch == farm.dispatcher.epoch and len(grant.grant) == 32
    assert busy(a1) <= 2 and busy(a2) <= 2
    # A second task build's tasks wait: every core runs a task or is lent.
    submit(etcd, keys, "b2", [{"id": "u1"}, {"id": "u2"}])
    done = a1.assignments()[0]
    a1.send_result(done)
    a1.wait("ack")
    # The freed core goes to whichever build has fewer: the run (1) vs b2 (0): b2 gets it.
    wait_until(lambda: any(b == "b2" for b, _, _ in a1.assignments() + a2.assignments()), 15)
    assert busy(a1) <= 2 and busy(a2) <= 2
    assert sum(run.slots().values()) == 1
    # The initiator needs none: its core goes back and b2's second task gets it.
    run.want(0)
    wait_until(lambda: sum(1 for b, _, _ in a1.assignments() + a2.assignments() if b == "b2") == 2, 15)
    wait_until(lambda: lent_now(a1) == {} and lent_now(a2) == {}, 15)
    assert run.slots() == {}


def test_run_builds_share_the_cores_fairly_and_their_grants_end_with_their_streams(farm):
    a1, a2 = farm.agent("a1"), farm.agent("a2")
    r1 = farm.initiator("r1", 8)
    wait_until(lambda: sum(r1.slots().values()) == 4, 15)
    assert r1.slots() == {"a1": 2, "a2": 2}
    # The Lends reach the agents on their own streams: no order with the initiator's grants.
    wait_until(lambda: lent_now(a1) and lent_now(a2), 15)
    r1.want(2)   # gives two back at once
    wait_until(lambda: sum(r1.slots().values()) == 2, 15)
    r2 = farm.initiator("r2", 8)
    wait_until(lambda: sum(r2.slots().values()) == 2, 15)
    r1.want(8)   # no preemption: r2 keeps its 2, nothing is free
    assert sum(r2.slots().values()) == 2
    r2.close()   # its stream ends: its grants end, and r1 gets the cores
    wait_until(lambda: sum(r1.slots().values()) == 4, 15)
    wait_until(lambda: all(sum(lent_now(a).values()) == 2 for a in (a1, a2)), 15)


def test_agents_without_a_helper_service_lend_nothing(farm):
    farm.agent("a1", helper=False)
    a2 = farm.agent("a2")
    r1 = farm.initiator("r1", 8)
    wait_until(lambda: r1.slots() == {"a2": 2}, 15)
    wait_until(lambda: sum(lent_now(a2).values()) == 2, 15)


def test_a_stream_without_the_cluster_token_is_refused(farm):
    r1 = farm.initiator("r1", 1, token="wrong")
    wait_until(lambda: r1.error is not None, 15)
    assert r1.error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_max_cores_per_build_caps_a_run_build_and_disabled_agents_lend_nothing(etcd, keys, farm):
    etcd.put(keys.settings, encode({"max_cores_per_build": 3}))
    wait_until(lambda: farm.dispatcher.settings.max_cores_per_build == 3, 10)
    a1, a2 = farm.agent("a1"), farm.agent("a2")
    r1 = farm.initiator("r1", 8)
    wait_until(lambda: sum(r1.slots().values()) == 3, 15)
    etcd.put(keys.agent_settings("a1"), encode({"disabled": True}))
    wait_until(lambda: "a1" not in r1.slots() and lent_now(a1) == {}, 15, message="a1's lend ended")
    wait_until(lambda: r1.slots() == {"a2": 2} and sum(lent_now(a2).values()) == 2, 15)


def test_cores_an_agent_says_are_compiling_are_neither_lent_nor_given_tasks_until_those_jobs_end(etcd, keys, farm):
    """After a failover an agent may still run jobs of an earlier leader's grants
    (docs/design.md section 8): its Hello counts them, and a Compiling message
    each time fewer run."""
    a1, a2 = farm.agent("a1", compiling=2), farm.agent("a2")
    r1 = farm.initiator("r1", 8)
    wait_until(lambda: r1.slots() == {"a2": 2}, 15, message="only a2's cores lent")
    submit(etcd, keys, "b1", [{"id": "t1"}])
    wait_until(lambda: farm.dispatcher.stats["queued"] == 1, 15, message="b1's task queued after a scheduling turn")
    assert a1.assignments() == [] and lent_now(a1) == {}
    a1.requests.put(pb.AgentMessage(epoch=a1.epoch, compiling=pb.Compiling(jobs=1)))
    # The freed core goes to the build holding fewer: b1 (none) before r1 (two).
    wait_until(lambda: a1.assignments() == [("b1", "t1", 1)], 15)
    assert lent_now(a1) == {}
    a1.requests.put(pb.AgentMessage(epoch=a1.epoch, compiling=pb.Compiling(jobs=0)))
    wait_until(lambda: r1.slots() == {"a1": 1, "a2": 2}, 15, message="a1's last core lent once its jobs ended")
    assert busy(a1) == 2


def lend_messages(agent: StubAgent) -> list[tuple[str, str, int]]:
    """The agent's Lend/Unlend messages so far: (kind, grant id, slots)."""
    return [(m.WhichOneof("body"), m.lend.grant or m.unlend.grant, m.lend.slots) for m in list(agent.messages)
            if m.WhichOneof("body") in ("lend", "unlend")]


def test_a_want_is_lent_from_one_agent_and_each_change_is_one_message(farm):
    """A want's cores come from one agent while it has free ones, preferring the one it holds a
    grant on; the agent hears once per grant per change, not once per core (the leader's event
    loop writing those was bench/grants.py's latency)."""
    a1, a2 = farm.agent("a1", cores=8), farm.agent("a2", cores=8)
    r1 = farm.initiator("r1", 4)
    wait_until(lambda: sum(r1.slots().values()) == 4, 15)
    (name, _), = r1.slots().items()
    agent = {"a1": a1, "a2": a2}[name]
    grant = r1.replies[-1].grants[0].grant
    wait_until(lambda: lent_now(agent) == {grant: 4}, 15)
    assert lend_messages(agent) == [("lend", grant, 4)]
    r1.want(6)   # grows on the same agent: the same grant, one more Lend
    wait_until(lambda: r1.slots() == {name: 6}, 15)
    assert r1.replies[-1].grants[0].grant == grant
    wait_until(lambda: lent_now(agent) == {grant: 6}, 15)
    r1.want(0)   # all given back at once: one Unlend
    wait_until(lambda: r1.slots() == {} and lent_now(agent) == {}, 15)
    assert lend_messages(agent) == [("lend", grant, 4), ("lend", grant, 6), ("unlend", grant, 0)]
    other = a2 if agent is a1 else a1
    assert lend_messages(other) == []


def test_lowering_a_want_gives_back_idle_slots_before_slots_a_job_uses(farm):
    """The initiator lowers its want while its jobs run on one grant; the leader cuts the grant
    with idle slots, not the one a job was just sent on (which the helper would then refuse,
    "the leader ended it", and the job compile locally). Before, the leader cut the agent
    holding the most slots, whatever ran there."""
    farm.agent("a1", cores=2)
    r1 = farm.initiator("r1", 2)
    wait_until(lambda: r1.slots() == {"a1": 2}, 15)
    farm.agent("a2", cores=1)
    r1.want(3)
    wait_until(lambda: r1.slots() == {"a1": 2, "a2": 1}, 15)
    grants = {g.agent: g.grant for g in r1.replies[-1].grants}
    r1.want(2, busy={grants["a1"]: 2})   # both of a1's slots run jobs; a2's is idle
    wait_until(lambda: sum(r1.slots().values()) == 2, 15)
    assert r1.slots() == {"a1": 2}
    assert {g.agent: g.grant for g in r1.replies[-1].grants} == {"a1": grants["a1"]}
