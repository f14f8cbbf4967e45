"""The UI's gunicorn lives and dies with its coordinator, and slow clients cannot take it offline."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import urllib.request
from urllib.parse import urlsplit

import pytest

from cli.processes import port_free
from tests.harness.wait import wait_until
from web.worker import HEADER_TIMEOUT

pytestmark = pytest.mark.slow


def test_ui_ends_when_its_coordinator_is_killed_and_the_port_can_be_reused(make_cluster):
    cluster = make_cluster(agents=0, backups=0)
    port = int(cluster.web_urls["p1"].rsplit(":", 1)[1])
    assert not port_free(port)
    # Only the coordinator process, not its process group: as when the OOM killer picks it.
    os.kill(cluster.coordinators["p1"].pid, signal.SIGKILL)
    cluster.coordinators["p1"].popen.wait(10)
    wait_until(lambda: port_free(port), 20, message="the orphaned UI to exit and free its port")
    cluster.add_coordinator("p1", "primary")
    cluster.wait_web("p1", timeout=30)
    assert cluster.api("p1").status()["name"] == "p1"


class _SlowClient(threading.Thread):
    """A client that sends its request head one line every second and never finishes it."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port, self.tls, self.stop = host, port, tls, stop
        self.started = threading.Event()
        self.closed = threading.Event()  # the server hung up on us

    def run(self) -> None:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=10)
            conn = self.tls.wrap_socket(raw, server_hostname="localhost") if self.tls else raw
            with conn:
                conn.sendall(b"GET /leader HTTP/1.1\r\nHost: localhost\r\n")
                self.started.set()
                line = 0
                while not self.stop.wait(1.0):
                    line += 1
                    conn.sendall(f"X-Slow-{line}: still typing\r\n".encode())
        except OSError:
            pass
        finally:
            self.closed.set()
            self.started.set()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_slow_clients_do_not_take_the_ui_offline(make_cluster, tls):
    cluster = make_cluster(agents=0, backups=0, tls=tls)
    url = cluster.web_urls["p1"]
    host, port = urlsplit(url).hostname, urlsplit(url).port
    context = ssl.create_default_context(cafile=cluster.ca) if tls else None
    stop = threading.Event()
    # 40, not 20: the old server had 2 x 8 threads, and an uneven split of the slow clients
    # between its 2 workers could leave one a free thread.
    slow = [_SlowClient(host, port, context, stop) for _ in range(40)]
    try:
        for client in slow:
            client.start()
        for client in slow:
            assert client.started.wait(10), "a slow client could not even connect"
        assert not any(c.closed.is_set() for c in slow), "a slow client was refused outright"

        def healthz() -> bool:
            with urllib.request.urlopen(url + "/healthz", timeout=2, context=context) as response:
                return response.status == 200

        # Every thread of the old server was stuck in a slow client's head: this timed out.
        wait_until(healthz, 8, interval=0.2, message="/healthz to answer while 40 slow clients dribble headers")
        assert cluster.api("p1").status()["name"] == "p1"
        assert not any(c.closed.is_set() for c in slow), "the slow clients were still connected"
        # And a head that never ends is not kept forever.
        wait_until(lambda: all(c.closed.is_set() for c in slow), HEADER_TIMEOUT + 10,
                   message="the server to close the slow clients after its header deadline")
    finally:
        stop.set()
        for client in slow:
            client.join(5)
