"""An agent's kept channel to a coordinator whose host vanished and came back.

agent/channels.py keeps one gRPC channel per coordinator and reuses it at
every move; cluster/keepalive.py makes that channel ping. The coordinator p1
runs in its own network namespace (tests/harness/netns.py) and the wire to
it is cut silently. Without the pings the channel stays READY over a dead
TCP connection, and after the heal a new stream on it waits for TCP's next
retransmission (seconds after a long cut). With them the channel leaves
READY within a few seconds, dials again, and after the heal a new stream is
answered long before TCP's backoff would have resent anything. Skipped,
with the reason, where network namespaces cannot be made.
"""
from __future__ import annotations

import grpc
import pytest

from agent.channels import Channels
from cluster.protocol import agent_pb2_grpc
from tests.harness.netns import NetnsCluster, unavailable
from tests.harness.wait import holds_for, wait_until

REASON = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

# Pings every second, answered within one (cluster/keepalive.py): a dead connection is found in ~2 s.
LEAVES_READY_WITHIN = 6.0
# Long enough that TCP's retransmission timer, doubling from 200 ms, waits seconds for its next try.
CUT_FOR = 8.0
# The channel redials at most a second apart (agent/channels.py); TCP would wait 3 s and more.
ANSWERED_WITHIN = 2.5


def answered(channel: grpc.Channel, timeout: float = 0.5) -> bool:
    """Whether the coordinator answers a new stream on this channel: a Connect without the
    agent token is refused at once (UNAUTHENTICATED), which only the coordinator can say."""
    call = agent_pb2_grpc.AgentServiceStub(channel).Connect(iter(()), timeout=timeout)
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def test_kept_channel_finds_the_cut_and_is_answered_soon_after_the_heal(make_cluster):
    cluster = make_cluster(cluster_class=NetnsCluster, agents=0, backups=0, ttl=10)
    p1 = cluster.wait_leader("p1")
    assert p1.grpc.startswith(cluster.netns.inner)
    channels = Channels()
    try:
        channel = channels.get(p1.grpc)
        wait_until(lambda: answered(channel), 10, message="p1 to answer on the kept channel")
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)   # no try_to_connect: only calls dial, as for an agent
        wait_until(lambda: states and states[-1] == grpc.ChannelConnectivity.READY, 5, message="READY")

        cluster.netns.cut()
        # A stream opened into the cut, like an agent's: its frames are in flight and lost.
        assert not answered(channel)
        wait_until(lambda: states[-1] != grpc.ChannelConnectivity.READY, LEAVES_READY_WITHIN,
                   message="the channel to leave READY during the cut (keepalive pings unanswered)")
        # Nothing gets through while cut, however often the channel redials.
        holds_for(lambda: not answered(channel), CUT_FOR, message="no answer through the cut wire")

        cluster.netns.heal()
        wait_until(lambda: answered(channel), ANSWERED_WITHIN,
                   message="p1 to answer a new stream on the kept channel soon after the heal")
        assert grpc.ChannelConnectivity.READY == states[-1]
    finally:
        channels.close()
