"""Through a failover, the new leader rebuilds its view of an agent's busy
cores from its Hello (coordinator/runtime/lending.py, docs/design.md section 8):
a real agent (agent.core.Agent serving compile jobs) still running a job under
the old leader's grant counts it in its Hello, and the new leader lends that
core to no one until the job ends. Real etcd, real gRPC, two in-process
runtimes on AioAgentServer."""
from __future__ import annotations

import contextlib

import pytest

from cluster.keys import encode
from coordinator.config import Timings
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from lease.client import connect
from lease.election import Election
from lease.session import Session
from tests.harness.ports import free_port
from tests.harness.wait import wait_until
from tests.test_agent import TTL, agents  # noqa: F401 - agents: a fixture
from tests.test_lending import Initiator


class Leader:
    """A runtime on AioAgentServer (what the daemon serves) that leads when told to."""

    def __init__(self, etcd_url, keys, name):
        self.name, self.keys = name, keys
        self.etcd = connect(etcd_url, timeout=2.0)
        self.address = f"127.0.0.1:{free_port()}"
        self.runtime = Runtime(self.etcd, keys, name, Timings(ttl=TTL))
        self.server = AioAgentServer(self.runtime, self.address)
        self.server.start()
        self.session = Session(self.etcd, ttl=TTL, healthy=lambda: True).start()
        self.election = Election(self.etcd, keys.leader, self.session)

    def lead(self) -> int:
        assert self.election.campaign(encode({"name": self.name, "role": "primary", "grpc": self.address}))
        self.runtime.start(self.election.epoch)
        return self.election.epoch

    def agent(self, name):
        dispatcher = self.runtime._dispatcher
        return dispatcher.agents.get(name) if dispatcher is not None else None

    def step_down(self) -> None:
        self.runtime.stop("handover")
        self.election.resign()

    def close(self) -> None:
        self.runtime.stop("test over")
        self.election.resign()
        self.session.close()
        self.server.stop(None)
        self.etcd.close()


@pytest.fixture
def leaders(etcd_url, keys):
    made = []

    def make(name):
        made.append(Leader(etcd_url, keys, name))
        return made[-1]

    yield make
    for leader in made:
        leader.close()


def test_a_new_leader_lends_no_core_that_still_runs_a_job_of_the_old_leaders_grant(leaders, agents):
    c1, c2 = leaders("c1"), leaders("c2")
    c1.lead()
    a1 = agents("a1", cores=2, helper_listen="127.0.0.1:0")
    wait_until(lambda: (c1.agent("a1") is not None and c1.agent("a1").stream is not None
                        and c1.agent("a1").info.get("helper")), 15, message="a1 connected to c1, serving jobs")
    r1 = Initiator(c1.address, "r1", 2)
    with contextlib.ExitStack() as stack:
        stack.callback(r1.close)
        wait_until(lambda: r1.slots() == {"a1": 2}, 15)
        grant = r1.replies[-1].grants[0]
        wait_until(lambda: a1.grants.slots() == {grant.grant: 2}, 15, message="a1 holds the grant")
        job = contextlib.ExitStack()
        job.enter_context(a1.grants.slot(grant.grant, grant.epoch))   # as Helper.Compile holds it while compiling

        c1.step_down()
        epoch = c2.lead()
        wait_until(lambda: c2.agent("a1") is not None and c2.agent("a1").stream is not None, 15,
                   message="a1 moved to c2")
        assert a1.grants.slots() == {}, "the old leader's grants ended"
        r2 = Initiator(c2.address, "r2", 4)
        stack.callback(r2.close)
        wait_until(lambda: r2.slots() == {"a1": 1}, 15, message="only a1's idle core lent")
        assert c2.agent("a1").compiling == 1 and c2.agent("a1").free() == 0
        assert r2.replies[-1].grants[0].epoch == epoch

        job.close()   # the old grant's job ends: its core is free for the new leader
        wait_until(lambda: r2.slots() == {"a1": 2}, 15, message="a1's second core lent once the job ended")
        assert c2.agent("a1").compiling == 0
