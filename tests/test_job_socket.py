"""The job server's socket (cli.job_server.JobSocket) ends its serving loop when told to, not at
its next poll: socketserver's loop polled every half second, and every `baton run` waited
that out between its COMMAND's end and its own (issue 14)."""
from __future__ import annotations

import selectors
import socket
import threading

import pytest

from cli import ccwire
from cli.job_server import JobServer
from tests.harness.cores import LocalCores
from tests.harness.wait import wait_until


LINK = "a.o is not a C or C++ source (a link, or another language)"   # cli.cc_args.plan's reason


def ask(path: str, job: dict) -> dict:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(path)
        ccwire.send(conn, job)
        return ccwire.receive(conn)


def serving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cc-jobs"]


def test_the_loop_never_polls_and_stop_ends_it(tmp_path, monkeypatch):
    timeouts: list = []
    real = selectors.DefaultSelector.select

    def select(self, timeout=None):
        timeouts.append(timeout)
        return real(self, timeout)

    monkeypatch.setattr(selectors.DefaultSelector, "select", select)
    before = set(serving_threads())
    server = JobServer(str(tmp_path), LocalCores(), wait=1.0).start()
    job = {"argv": ["gcc", "-o", "prog", "a.o"], "cwd": str(tmp_path), "env": {}}   # a link: local
    assert ask(server.path, job) == {"local": LINK}
    wait_until(lambda: timeouts, timeout=10, message="the loop waiting for connections")
    # socketserver's loop waited at most poll_interval (0.5 s) a time, and so noticed
    # shutdown() only then; this one waits with no timeout and is woken instead.
    assert set(timeouts) == {None}
    server.stop()
    wait_until(lambda: not set(serving_threads()) - before, timeout=10, message="the loop ended")
    with pytest.raises(OSError):   # no new connections: the socket is closed and gone
        ask(server.path, job)


def test_a_job_in_flight_at_stop_is_answered(tmp_path):
    class SlowCores(LocalCores):
        def __init__(self):
            self.asked, self.go = threading.Event(), threading.Event()

        def local_at_once(self, wait=None):
            self.asked.set()
            self.go.wait(30)
            return "told to compile here"

    cores = SlowCores()
    server = JobServer(str(tmp_path), cores, wait=1.0).start()
    answers: list[dict] = []
    (tmp_path / "a.c").write_text("int a;\n")
    job = {"argv": ["gcc", "-c", "a.c", "-o", "a.o"], "cwd": str(tmp_path), "env": {}}
    client = threading.Thread(target=lambda: answers.append(ask(server.path, job)))
    client.start()
    assert cores.asked.wait(30)
    server.stop()   # ends the loop, not the connection's own thread
    cores.go.set()
    client.join(30)
    assert answers == [{"local": "told to compile here"}]


def test_stop_twice_and_stop_of_a_server_never_started_return(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    started = JobServer(str(tmp_path / "a"), LocalCores(), wait=1.0).start()
    started.stop()
    started.stop()
    never = JobServer(str(tmp_path / "b"), LocalCores(), wait=1.0)
    never.stop()
