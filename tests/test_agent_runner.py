"""The agent's task runner with real subprocesses (no etcd, no gRPC)."""
from __future__ import annotations

import os
import queue
import shutil

import pytest

from agent.results import ResultBuffer
from agent.runner import OUTPUT_TAIL_BYTES, Runner, TaskRef, TaskResult
from lease.errors import ConfigError
from tests.harness.wait import wait_until


class Collected:
    def __init__(self):
        self.q: queue.Queue = queue.Queue()

    def __call__(self, result: TaskResult) -> None:
        self.q.put(result)

    def next(self, timeout: float = 30.0) -> TaskResult:
        return self.q.get(timeout=timeout)


@pytest.fixture
def results():
    return Collected()


@pytest.fixture
def runner(tmp_path, results):
    r = Runner(str(tmp_path / "work"), results, default_timeout=60)
    yield r
    r.stop()


def ref(task="t", build="b1", attempt=1) -> TaskRef:
    return TaskRef(build, task, attempt)


def pid_gone(pid: int) -> bool:
    """True once pid does not exist or is a zombie (dead, waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def test_exit_code_output_and_environment(runner, results):
    assert runner.start(ref("ok"), "echo out; echo err >&2; echo $BATON_TASK_ID $GREETING", env={"GREETING": "hi"})
    r = results.next()
    assert (r.task, r.exit_code, r.error) == (ref("ok"), 0, "")
    assert r.output_tail == b"out\nerr\nok hi\n"
    assert r.duration > 0

    runner.start(ref("fails"), "exit 3")
    r = results.next()
    assert (r.exit_code, r.error) == (3, "")


def test_killed_by_signal_reports_128_plus_signal(runner, results):
    runner.start(ref(), "kill -9 $$")
    assert results.next().exit_code == 128 + 9


def test_output_tail_is_bounded_to_the_last_4_kib(runner, results):
    # ~2 MB of output; only the end may be kept.
    runner.start(ref(), "i=0; while [ $i -lt 40 ]; do head -c 50000 /dev/zero | tr '\\0' a; i=$((i+1)); done;"
                        " printf THE-END")
    r = results.next()
    assert r.exit_code == 0
    assert len(r.output_tail) == OUTPUT_TAIL_BYTES
    assert r.output_tail.endswith(b"aaaTHE-END")


def test_timeout_kills_the_whole_process_group(runner, results, tmp_path):
    pidfile = tmp_path / "child.pid"
    runner.start(ref(), f"sleep 300 & echo $! > {pidfile}; echo started; sleep 300", timeout=1)
    r = results.next()
    assert r.exit_code == 124
    assert r.error == "timed out after 1s"
    assert r.output_tail == b"started\n"
    child = int(pidfile.read_text())
    wait_until(lambda: pid_gone(child), 10, message="background child of a timed-out task killed")


def test_processes_left_behind_die_with_the_task(runner, results, tmp_path):
    pidfile = tmp_path / "child.pid"
    # The background child keeps the output pipe open; the task must still end.
    runner.start(ref(), f"sleep 300 & echo $! > {pidfile}; exit 5")
    r = results.next(timeout=20)
    assert (r.exit_code, r.error) == (5, "")
    wait_until(lambda: pid_gone(int(pidfile.read_text())), 10, message="left-behind child killed")


def test_each_build_has_its_own_work_directory(runner, results, tmp_path):
    work = tmp_path / "work"
    runner.start(ref("make", "b1"), "pwd; echo made > artifact")
    r = results.next()
    assert r.output_tail.decode().strip() == str(work / "b1")
    runner.start(ref("use", "b1"), "cat artifact")
    assert results.next().output_tail == b"made\n"
    runner.start(ref("other", "b2"), "pwd; cat artifact")
    r = results.next()
    assert r.output_tail.decode().splitlines()[0] == str(work / "b2")
    assert r.exit_code != 0


def test_a_work_directory_that_cannot_be_made_is_refused_at_start(tmp_path, results):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the work directory should be")
    with pytest.raises(ConfigError, match="cannot create the work directory .*not-a-dir"):
        Runner(str(blocker), results)


def test_spawn_failure_is_a_result_not_a_crash(tmp_path, results):
    # The work directory existed at start (else the runner refuses, above) and is gone now.
    work = tmp_path / "gone"
    r_ = Runner(str(work), results)
    shutil.rmtree(work)
    work.write_text("a file where the work directory should be")
    assert r_.start(ref(), "true")
    r = results.next()
    assert r.exit_code == -1
    assert r.error.startswith("could not start the task:")

    r_ = Runner(str(tmp_path / "w"), results)
    for bad in ("..", ".results", "a/b"):
        r_.start(ref(build=bad), "true")
        r = results.next()
        assert r.exit_code == -1 and "cannot be used as a directory name" in r.error


def test_a_task_attempt_never_runs_twice(runner, results, tmp_path):
    counter = tmp_path / "runs"
    cmd = f"echo run >> {counter}"
    assert runner.start(ref(), cmd)
    assert not runner.start(ref(), cmd)
    results.next()
    assert not runner.start(ref(), cmd), "a finished attempt must not run again"
    assert runner.start(ref(attempt=2), cmd), "the next attempt is a different task run"
    results.next()
    assert counter.read_text() == "run\nrun\n"
    runner.mark_seen([ref(attempt=3)])
    assert not runner.start(ref(attempt=3), cmd)


def test_cancel_kills_the_task_and_reports_nothing(runner, results, tmp_path):
    pidfile = tmp_path / "child.pid"
    runner.start(ref("long"), f"sleep 300 & echo $! > {pidfile}; sleep 300")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
    assert runner.running() == [ref("long")]
    assert runner.cancel(ref("long"))
    wait_until(lambda: runner.running() == [], 10, message="cancelled task gone")
    wait_until(lambda: pid_gone(int(pidfile.read_text())), 10)
    runner.start(ref("after"), "true")
    assert results.next().task == ref("after"), "the cancelled task must not report a result"


def test_result_buffer_survives_a_restart_and_forgets_on_ack(tmp_path):
    buf = ResultBuffer.in_workdir(str(tmp_path))
    one = TaskResult(ref("a"), 0, 1.5, b"\x00binary\xfftail", "")
    two = TaskResult(ref("b", attempt=2), 124, 3.0, b"", "timed out after 3s")
    buf.add(one)
    buf.add(two)
    again = ResultBuffer.in_workdir(str(tmp_path))
    assert sorted(again.load(), key=lambda r: r.task) == [one, two]
    assert again.ack(one.task)
    assert not again.ack(one.task)
    assert ResultBuffer.in_workdir(str(tmp_path)).load() == [two]
    (tmp_path / ".results" / "garbage.json").write_text("{not json")
    assert ResultBuffer.in_workdir(str(tmp_path)).load() == [two]
    assert os.path.exists(tmp_path / ".results" / "garbage.json.bad")
