"""Runs tasks as subprocesses, one process group each, and reports results.

Each task is `/bin/sh -c <cmd>` in the build's work directory
`<workdir>/<build_id>/`, in a new session (so its own process group), with
stdin from /dev/null and stdout+stderr combined into one pipe. Only the last
OUTPUT_TAIL_BYTES of that output are kept, whatever the task prints. Tasks
are untrusted code: they run with a clean environment and, when the agent
is root, as the task user (agent/sandbox.py).

What happens at the end of a task:
- it exits: any process it left behind in its group is killed (a build step's
  stray background daemons must not outlive it), the result is reported;
- it runs past its timeout: the whole group gets SIGKILL, the result has exit
  code 124 and the error "timed out after Ns" (124 is what timeout(1) uses);
- it is cancelled (the coordinator no longer wants it, or the agent stops):
  the group gets SIGKILL and no result is reported;
- it cannot be started (bad work directory, no /bin/sh, ...): a result with
  exit code -1 and an error sentence, never an exception.

A (build, task, attempt) runs at most once on a Runner: a second start of
the same TaskRef is refused, also after the first one finished.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from typing import Callable, Iterable

from agent import sandbox

log = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4096
TIMEOUT_EXIT_CODE = 124
SPAWN_FAILED_EXIT_CODE = -1
# After the shell exits, how long to keep reading output that processes it
# left behind already wrote before they are killed.
_STRAGGLER_DRAIN = 1.0
_POLL = 0.2


@dataclasses.dataclass(frozen=True, order=True)
class TaskRef:
    """One attempt of one task of one build (the protocol's TaskRef)."""

    build_id: str
    task_id: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.build_id}/{self.task_id}#{self.attempt}"

    def digest(self) -> str:
        """A safe, fixed-length file name for this ref (ids are free text)."""
        return hashlib.sha256(f"{self.build_id}\0{self.task_id}\0{self.attempt}".encode()).hexdigest()[:40]


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """How one attempt ended. `error` is empty when the command ran to its end."""

    task: TaskRef
    exit_code: int
    duration: float
    output_tail: bytes = b""
    error: str = ""

    def to_json(self) -> dict:
        return {"build_id": self.task.build_id, "task_id": self.task.task_id,
                "attempt": self.task.attempt, "exit_code": self.exit_code,
                "duration": self.duration, "error": self.error,
                "output_tail": base64.b64encode(self.output_tail).decode()}

    @classmethod
    def from_json(cls, data: dict) -> "TaskResult":
        """Raises KeyError/ValueError/TypeError on a malformed record."""
        return cls(TaskRef(str(data["build_id"]), str(data["task_id"]), int(data["attempt"])),
                   int(data["exit_code"]), float(data["duration"]),
                   base64.b64decode(data.get("output_tail", "")), str(data.get("error", "")))


class OutputTail:
    """The last `limit` bytes written to a stream; memory stays bounded."""

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES):
        self.limit = limit
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk[-self.limit:]
        if len(self._buf) > self.limit:
            del self._buf[:-self.limit]

    def value(self) -> bytes:
        return bytes(self._buf)


def build_dir_name(build_id: str) -> str:
    """The build id as one safe directory name; raises ValueError otherwise.
    Names starting with "." are refused: they are the agent's own (.results)."""
    if not build_id or build_id.startswith(".") or "/" in build_id or "\0" in build_id:
        raise ValueError(f"build id {build_id!r} cannot be used as a directory name")
    return build_id


class _Task:
    def __init__(self, ref: TaskRef, cmd: str, timeout: float, env: dict[str, str]):
        self.ref = ref
        self.cmd = cmd
        self.timeout = timeout
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self.thread: threading.Thread | None = None


class Runner:
    """Starts tasks in threads; calls on_result(TaskResult) from the task's
    thread when one ends (not for cancelled tasks). An exception raised by
    on_result is logged, never lost silently."""

    def __init__(self, workdir: str, on_result: Callable[[TaskResult], None],
                 default_timeout: float = 3600.0, clock: Callable[[], float] = time.monotonic,
                 task_user: sandbox.TaskUser | None = None):
        """task_user: whom tasks run as (None: the agent's own user). Creates
        the work directory; raises ConfigError when the task user cannot reach it."""
        if default_timeout <= 0:
            raise ValueError(f"default task timeout must be > 0 seconds, got {default_timeout}")
        self.workdir = os.path.abspath(workdir)
        self.task_user = task_user
        sandbox.prepare_workdir(self.workdir, task_user)
        self.on_result = on_result
        self.default_timeout = default_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[TaskRef, _Task] = {}
        self._seen: set[TaskRef] = set()

    # -- the agent's verbs --------------------------------------------------------
    def start(self, ref: TaskRef, cmd: str, timeout: float = 0.0,
              env: dict[str, str] | None = None) -> bool:
        """Start the task in the background. Returns False (and does nothing)
        when this TaskRef was started before on this runner."""
        task = _Task(ref, cmd, timeout if timeout and timeout > 0 else self.default_timeout, dict(env or {}))
        with self._lock:
            if ref in self._seen:
                return False
            self._seen.add(ref)
            self._running[ref] = task
            task.thread = threading.Thread(target=self._run, args=(task,), name=f"task {ref}", daemon=True)
        task.thread.start()
        return True

    def mark_seen(self, refs: Iterable[TaskRef]) -> None:
        """Refuse future starts of these refs (results kept from before a restart)."""
        with self._lock:
            self._seen.update(refs)

    def cancel(self, ref: TaskRef) -> bool:
        """Kill the task's process group; its result is not reported. False if not running."""
        with self._lock:
            task = self._running.get(ref)
            if task is None:
                return False
            task.cancelled = True
            proc = task.proc
        if proc is not None:
            _kill_group(proc)
        return True

    def running(self) -> list[TaskRef]:
        with self._lock:
            return sorted(self._running)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every running task and wait (up to timeout) for their threads."""
        with self._lock:
            tasks = list(self._running.values())
        for task in tasks:
            self.cancel(task.ref)
        deadline = time.monotonic() + timeout
        for task in tasks:
            if task.thread is not None:
                task.thread.join(max(0.0, deadline - time.monotonic()))

    # -- one task ------------------------------------------------------------------
    def _run(self, task: _Task) -> None:
        started = self._clock()
        try:
            result = self._execute(task, started)
        except Exception as exc:  # noqa: BLE001 - a runner bug must still yield a result
            log.exception("task %s: runner failed", task.ref)
            result = TaskResult(task.ref, SPAWN_FAILED_EXIT_CODE, self._clock() - started,
                                b"", f"the agent failed to run the task: {exc}")
        with self._lock:
            self._running.pop(task.ref, None)
            cancelled = task.cancelled
        if cancelled:
            log.info("task %s cancelled; no result reported", task.ref)
            return
        try:
            self.on_result(result)
        except Exception:  # noqa: BLE001
            log.exception("task %s: handling its result failed", task.ref)

    def _execute(self, task: _Task, started: float) -> TaskResult:
        ref = task.ref
        tmpdir = None
        try:
            user = self.task_user
            cwd = sandbox.make_task_dir(self.workdir, build_dir_name(ref.build_id), user)
            tmpdir = sandbox.make_task_dir(os.path.join(self.workdir, sandbox.TMP_DIR), ref.digest(), user)
            env = sandbox.task_environment(task.env, cwd, tmpdir, ref.build_id, ref.task_id, ref.attempt)
            argv = ["/bin/sh", "-c", task.cmd]
            proc = subprocess.Popen(
                user.wrap(argv) if user else argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                umask=sandbox.TASK_UMASK)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.warning("task %s could not start: %s", ref, exc)
            if tmpdir is not None:
                sandbox.remove_task_dir(tmpdir)
            return TaskResult(ref, SPAWN_FAILED_EXIT_CODE, self._clock() - started, b"",
                              f"could not start the task: {exc}")
        try:
            return self._follow(task, proc, started)
        finally:
            sandbox.remove_task_dir(tmpdir)

    def _follow(self, task: _Task, proc: subprocess.Popen, started: float) -> TaskResult:
        ref = task.ref
        with self._lock:
            task.proc = proc
            if task.cancelled:  # cancel() came while we were spawning
                _kill_group(proc)
        tail = OutputTail()
        timed_out = _pump(proc, tail, started + task.timeout, self._clock)
        code = proc.wait()
        duration = self._clock() - started
        if timed_out:
            return TaskResult(ref, TIMEOUT_EXIT_CODE, duration, tail.value(),
                              f"timed out after {task.timeout:g}s")
        # A signal death (-N) is reported the way a shell would: 128 + N.
        return TaskResult(ref, code if code >= 0 else 128 - code, duration, tail.value())


def _pump(proc: subprocess.Popen, tail: OutputTail, deadline: float, clock: Callable[[], float]) -> bool:
    """Read the task's output until the shell has exited and the pipe is
    drained; enforce the deadline. Returns True if the task was killed for
    running too long. Never reaps proc, so its process group id cannot be
    reused while we may still signal it."""
    fd = proc.stdout.fileno()
    timed_out = False
    eof = False
    drain_until: float | None = None  # set once the shell is gone (or killed)
    try:
        while True:
            now = clock()
            if drain_until is None and now >= deadline:
                timed_out = True
                _kill_group(proc)
                drain_until = now + _STRAGGLER_DRAIN
            if drain_until is not None and (eof or now >= drain_until):
                break  # done, or something outside the group holds the pipe: give up on it
            wait = min(_POLL, max(0.0, (drain_until or deadline) - now))
            if eof:
                time.sleep(min(wait, 0.05))  # the task closed its output but runs on
            elif select.select([fd], [], [], wait)[0]:
                chunk = os.read(fd, 65536)
                if chunk:
                    tail.feed(chunk)
                else:
                    eof = True  # every writer is gone
            if drain_until is None and _exited(proc):
                # The shell is done; what it left behind in its group dies now.
                _kill_group(proc)
                drain_until = clock() + _STRAGGLER_DRAIN
    finally:
        _kill_group(proc)
        proc.stdout.close()
    return timed_out


def _exited(proc: subprocess.Popen) -> bool:
    """Has the shell exited? Does not reap it (WNOWAIT), so the pid (and group id) stays ours."""
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the task's whole process group. Safe when it is already gone."""
    if proc.returncode is not None:
        return  # reaped: the group id may belong to someone else now
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
