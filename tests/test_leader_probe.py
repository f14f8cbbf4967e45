"""coordinator.leader_probe against real processes and the real kernel: a
dead process is refused, a paused one still accepts, a silent port times
out, and only a refusal after a broken connection is a sighting."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading

import pytest

from cluster.records import LeaderRecord
from cluster.settings import Settings
from coordinator import ha
from coordinator.leader_probe import LeaderProbe
from tests.harness.wait import holds_for, wait_until

# A pretend leader: listens with a backlog of 1, accepts one connection, reports
# it, then on "close" closes that connection but keeps listening without
# accepting (so its accept queue can be filled: new connects then time out).
LISTENER = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
print("accepted", flush=True)
for line in sys.stdin:
    if line.strip() == "close":
        conn.close()
        print("closed", flush=True)
"""


class Listener:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", LISTENER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.address = f"127.0.0.1:{self.port}"

    def wait_accepted(self):
        assert self.proc.stdout.readline().strip() == "accepted"

    def close_connection(self):
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "closed"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def listener():
    pretend = Listener()
    yield pretend
    pretend.stop()


@pytest.fixture
def probe():
    sightings = threading.Event()
    p = LeaderProbe(sightings.set, connect_timeout=0.5, retry=0.1)
    p.sightings = sightings
    p.start()
    yield p
    p.stop()


def leader_at(address: str, epoch: int = 7) -> LeaderRecord:
    return LeaderRecord("p1", "primary", epoch, grpc=address, lease_id=0x71)


def test_a_killed_leader_is_seen_refused_at_once(listener, probe):
    leader = leader_at(listener.address)
    probe.watch(leader)
    listener.wait_accepted()
    listener.proc.kill()
    result = wait_until(probe.result, 5, message="the probe's sighting")
    assert result == ha.ProbeResult(7, 0x71, listener.address, broken=True, refused=True,
                                    detail=f"connection refused at {listener.address}")
    assert probe.sightings.is_set(), "the HA loop is woken"


def test_a_paused_leader_still_accepts_and_is_never_reported(listener, probe):
    probe.watch(leader_at(listener.address))
    listener.wait_accepted()
    listener.proc.send_signal(signal.SIGSTOP)
    # The kernel still completes handshakes on a stopped process's listening socket.
    socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
    holds_for(lambda: probe.result() is None, 1.5, message="no sighting of a paused leader")


def test_a_broken_connection_and_a_silent_port_are_no_crash(listener, probe):
    leader = leader_at(listener.address)
    probe.watch(leader)
    listener.wait_accepted()
    # Fill the listener's accept queue: the kernel then drops new SYNs, so a connect
    # times out, as it does to a host cut off by the network.
    fillers = []
    for _ in range(10):
        s = socket.socket()
        s.settimeout(0.3)
        fillers.append(s)
        try:
            s.connect(("127.0.0.1", listener.port))
        except (socket.timeout, TimeoutError):
            break
    else:
        pytest.fail("the accept queue never filled")
    listener.close_connection()
    result = wait_until(probe.result, 5, message="the probe's report")
    assert result.broken and not result.refused and "the lease decides" in result.detail
    snap = ha.Snapshot(leader=leader, coordinators={}, settings=Settings(selected_backup="b1"))
    assert ha.decide(snap, ha.Me("b1", "backup", "p1", probe=result)).action == ha.NONE
    for s in fillers:
        s.close()


def test_a_refusal_without_a_connection_first_is_no_evidence(probe):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{free.getsockname()[1]}"
    free.close()   # nothing listens there: every connect is refused
    probe.watch(leader_at(address))
    holds_for(lambda: probe.result() is None, 1.0, message="no sighting without a connection first")


def test_a_new_leader_record_is_a_new_target(listener, probe):
    probe.watch(leader_at(listener.address))
    listener.wait_accepted()
    listener.proc.kill()
    wait_until(probe.result, 5, message="the probe's sighting")
    probe.watch(leader_at(listener.address, epoch=8))   # the same address, a new session
    assert probe.result() is None
    holds_for(lambda: probe.result() is None, 0.5, message="no sighting of the new session")
