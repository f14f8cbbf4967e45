"""How `--wait` follows a build (cli.wait), with coordinators as plain fakes:
which coordinator it reads from as leadership moves, what it shows on a
terminal. The real failover is in tests/e2e/test_cli.py."""
from __future__ import annotations

import io

import pytest

from cli.api_client import ApiError
from cli.wait import follow_build
from lease.errors import ConfigError, EtcdUnavailable


class FakeCoordinator:
    """Answers GET /api/v1/builds/<id> from a script of build documents; None = cannot be reached."""

    def __init__(self, url: str, script: list):
        self.url, self.script, self.calls = url, list(script), 0

    def _next(self):
        self.calls += 1
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if answer is None:
            raise ApiError(0, f"cannot reach {self.url}: connection refused")
        if isinstance(answer, int):
            raise ApiError(answer, f"{answer}: refused")
        return answer

    def build(self, build_id):
        return self._next()

    def request(self, method, path):
        return self._next()


def build(state, done=0, running=0, queued=0, failed=(), total=3):
    tasks = [{"id": t, "state": "failed", "exit_code": 2, "agent": "a1", "output_tail": "cc: error: x.c\n"}
             for t in failed]
    return {"id": "b-1", "state": state, "tasks": tasks,
            "counts": {"done": done, "running": running, "queued": queued, "failed": len(failed)}}


def run(directory, coordinators, out=None, timeout=60.0):
    clock = {"now": 0.0}

    def sleep(s):
        clock["now"] += s
    return follow_build("b-1", directory, lambda url: coordinators[url], timeout, out=out, sleep=sleep,
                        clock=lambda: clock["now"])


def test_waiting_rides_through_a_failover_and_a_handback():
    p1 = FakeCoordinator("https://p1", [build("running", 1, 1, 1), None, build("done", 3)])
    b1 = FakeCoordinator("https://b1", [build("running", 2, 1, 0)])
    views = iter([["https://p1", "https://b1"],      # p1 leads
                  ["https://p1", "https://b1"],      # p1 died; its key has not expired yet
                  EtcdUnavailable("no endpoint"),    # etcd itself hiccups
                  ["https://b1"],                    # b1 leads, p1's registration is gone
                  ["https://p1", "https://b1"]])     # handed back to p1

    def directory():
        view = next(views)
        if isinstance(view, Exception):
            raise view
        return view
    result = run(directory, {"https://p1": p1, "https://b1": b1})
    assert result["state"] == "done"
    assert (p1.calls, b1.calls) == (3, 2)  # read from the backup while p1 was gone


def test_a_refusal_that_waiting_cannot_cure_ends_the_wait():
    p1 = FakeCoordinator("https://p1", [401])
    with pytest.raises(ApiError) as err:
        run(lambda: ["https://p1"], {"https://p1": p1})
    assert err.value.status == 401


def test_a_build_that_does_not_end_in_time_is_reported():
    p1 = FakeCoordinator("https://p1", [build("running", 0, 3)])
    with pytest.raises(ConfigError, match="did not end within 5 s"):
        run(lambda: ["https://p1"], {"https://p1": p1}, timeout=5)


def test_on_a_terminal_it_shows_counts_as_they_change_and_failed_tails_once():
    p1 = FakeCoordinator("https://p1", [build("running", 0, 2, 1), build("running", 0, 2, 1),
                                        build("running", 1, 1, 0, failed=["link"]), None,
                                        build("failed", 2, 0, 0, failed=["link"])])
    out = io.StringIO()
    result = run(lambda: ["https://p1"], {"https://p1": p1}, out=out)
    assert result["state"] == "failed"
    lines = out.getvalue().splitlines()
    assert lines[0] == "reading from https://p1"
    assert lines.count("b-1: 0 done, 2 running, 1 queued, 0 failed") == 1
    assert "task link failed (exit 2, agent a1)" in lines and lines.count("  | cc: error: x.c") == 1
    assert any(line.startswith("no coordinator answers (cannot reach https://p1") for line in lines)
    assert lines[-1] == "b-1: 2 done, 0 running, 0 queued, 1 failed"


def test_piped_it_says_nothing(capsys):
    p1 = FakeCoordinator("https://p1", [build("running", 0, 3), build("done", 3)])
    assert run(lambda: ["https://p1"], {"https://p1": p1})["state"] == "done"
    assert capsys.readouterr().err == ""
