"""The network-namespace harness (tests/harness/netns.py): a cut wire is silent
(nothing refused, reset or reported to either side) and a healed one carries
the held connection on; without the cut, a closed port is refused, so the
checks below could fail."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.harness.netns import Netns, unavailable
from tests.harness.ports import free_port

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = server.accept()
while data := conn.recv(100):
    conn.sendall(data)
"""


@pytest.fixture
def netns():
    ns = Netns()
    yield ns
    ns.close()


def test_a_cut_wire_loses_packets_silently_and_a_healed_one_carries_on(netns):
    port, closed = free_port(), free_port()
    echo = subprocess.Popen(netns.wrap([sys.executable, "-c", ECHO, netns.inner, str(port)]),
                            stdout=subprocess.PIPE)
    try:
        assert echo.stdout.readline() == b"ready\n"
        held = socket.create_connection((netns.inner, port), timeout=5)
        held.sendall(b"one")
        assert held.recv(10) == b"one"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((netns.inner, closed), timeout=5)

        netns.cut()
        held.sendall(b"two")            # leaves without an error
        held.settimeout(1.0)
        with pytest.raises(TimeoutError) as heard:
            held.recv(10)
        assert heard.value.errno is None, "the socket's own timeout, not the connection's end"
        for target in (port, closed):   # a refused connect would be evidence of a crash
            with pytest.raises(TimeoutError):
                socket.create_connection((netns.inner, target), timeout=1.0)

        netns.heal()
        held.settimeout(30)
        assert held.recv(10) == b"two"  # TCP's retransmission, once the wire carries again
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((netns.inner, closed), timeout=5)
        held.close()
    finally:
        echo.kill()
        echo.wait()


def test_close_removes_the_namespaces_and_links():
    ns = Netns()
    ns.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert ns.name not in names and ns.outer_if not in links
