"""The leader's in-memory model of builds, tasks and agents.

No I/O here: `Build.from_spec` turns the spec the web API wrote
(builds/<id>) plus the task records found in etcd (tasks/<id>/<task>) into
a build whose tasks know their state, attempt and agent; the methods below
move tasks between states and say which records must be written. The
runtime owns the one thread that touches these objects.

Task states: waiting (dependencies not done), ready (queued, may start),
assigning (running record being written), running, done, failed. A task
whose dependency failed never runs: it is recorded failed with the error
"not run: dependency X failed" so that every task ends exactly once with a
recorded result. A cancelled build's tasks that have not ended end failed
with the error "cancelled" (see Build.cancel), and the build ends `cancelled`.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Iterable

from cluster.records import BUILD_ENDED

WAITING, READY, ASSIGNING, RUNNING, DONE, FAILED = "waiting", "ready", "assigning", "running", "done", "failed"
FINISHED = (DONE, FAILED)
HOLDS_CORE = (ASSIGNING, RUNNING)
CANCELLED = "cancelled"   # a cancelled build's state, and the error of the tasks it ended
OUTPUT_TAIL_CHARS = 8192   # of a task's output kept in its record
ERROR_CHARS = 2000


@dataclasses.dataclass(eq=False, slots=True)  # slots: a takeover makes thousands at once
class Task:
    build_id: str
    id: str
    cmd: str
    deps: tuple[str, ...] = ()
    timeout: float = 0.0
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    state: str = WAITING
    attempt: int = 0
    agent: str | None = None
    assigned: float | None = None      # wall clock of the current attempt's assignment
    sent: bool = False                 # the Assignment went out on a stream
    # While the result is being written: (its record, [(stream, first)]), the streams to ack
    # once it is durable; first is False for duplicates of it (acked with recorded=false).
    recording: Any = None
    record: dict | None = None         # the finished record, once durable
    ready_at: float = 0.0              # monotonic time it became ready (for latency stats)
    waiting_on: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.build_id, self.id)

    def running_record(self) -> dict:
        return {"state": RUNNING, "attempt": self.attempt, "agent": self.agent, "assigned": self.assigned}

    def result_record(self, exit_code: int | None, duration: float, output_tail: str,
                      error: str, now: float) -> dict:
        failed = bool(error) or exit_code != 0
        # Bounded whatever the agent sends: the record is one etcd value (agents keep
        # agent/runner.py's OUTPUT_TAIL_BYTES of output; an error is a sentence).
        output_tail, error = output_tail[-OUTPUT_TAIL_CHARS:], error[:ERROR_CHARS]
        return {"state": FAILED if failed else DONE, "attempt": self.attempt, "agent": self.agent,
                "assigned": self.assigned, "finished": now,
                "result": {"exit_code": exit_code, "duration": duration, "output_tail": output_tail,
                           "agent": self.agent, "attempt": self.attempt, "error": error}}

    def cancelled_record(self, now: float) -> dict:
        """The end of a task of a cancelled build: never started, or stopped on its agent."""
        ran = self.state in HOLDS_CORE
        agent = self.agent if ran else None
        duration = max(0.0, now - self.assigned) if ran and self.assigned else 0.0
        return {"state": FAILED, "attempt": self.attempt, "agent": agent, "assigned": self.assigned if ran else None,
                "finished": now,
                "result": {"exit_code": None, "duration": duration, "output_tail": "", "agent": agent,
                           "attempt": self.attempt, "error": CANCELLED}}

    def not_run_record(self, reason: str, now: float) -> dict:
        return {"state": FAILED, "attempt": self.attempt, "agent": None, "assigned": None, "finished": now,
                "result": {"exit_code": None, "duration": 0.0, "output_tail": "", "agent": None,
                           "attempt": self.attempt, "error": f"not run: {reason}"}}


@dataclasses.dataclass(eq=False)
class Build:
    id: str
    name: str
    order: float                     # submission order (create revision of builds/<id>)
    tasks: dict[str, Task]
    dependants: dict[str, list[str]]
    # Tasks in the order they should start; an OrderedDict so that a task run again goes first.
    ready: collections.OrderedDict[str, None] = dataclasses.field(default_factory=collections.OrderedDict)
    in_use: int = 0                  # tasks holding a core (assigning or running)
    n_done: int = 0
    n_failed: int = 0
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    cancelled: bool = False          # build-cancel/<id> asked for it: it ends `cancelled`
    status_written: float = float("-inf")   # monotonic time of the last build-status write
    written_state: str | None = None        # the state that write carried

    @classmethod
    def from_spec(cls, spec: dict, order: float, records: dict[str, dict], now: float,
                  monotonic: float) -> tuple["Build", list[tuple[Task, dict]]]:
        """The build and the records to write now (tasks that can never run:
        unknown dependency, a dependency cycle, a failed dependency)."""
        tasks: dict[str, Task] = {}
        any_deps = False
        # The build file's env for every task, under each task's own (cluster/buildfile.py).
        build_env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
        for raw in spec.get("tasks") or []:
            # A takeover builds thousands of these while agents wait for their Welcome:
            # no generator or comprehension for the usual empty deps and env.
            deps, env = raw.get("deps"), raw.get("env")
            if env or build_env:
                env = {**build_env, **{str(k): str(v) for k, v in (env or {}).items()}}
            task = Task(build_id=spec["id"], id=str(raw["id"]), cmd=str(raw.get("cmd", "")),
                        deps=tuple(map(str, deps)) if deps else (),
                        timeout=float(raw.get("timeout") or 0),
                        env=env or {})
            any_deps = any_deps or bool(deps)
            rec = records.get(task.id)
            if rec:
                task.attempt = int(rec.get("attempt") or 0)
                task.agent = rec.get("agent")
                task.assigned = rec.get("assigned")
                if rec.get("state") in FINISHED:
                    task.state, task.record = rec["state"], rec
                elif rec.get("state") == RUNNING:
                    task.state, task.sent = RUNNING, True
            tasks[task.id] = task
        dependants: dict[str, list[str]] = {t: [] for t in tasks}
        build = cls(id=spec["id"], name=str(spec.get("name", "")), order=order, tasks=tasks,
                    dependants=dependants)
        writes: list[tuple[Task, dict]] = []
        if any_deps:  # else no dependants, no unknown dependency, no cycle
            for task in tasks.values():
                for dep in task.deps:
                    if dep in dependants:
                        dependants[dep].append(task.id)
            for task in tasks.values():
                unknown = [d for d in task.deps if d not in tasks]
                if unknown and task.state not in FINISHED:
                    writes += build._finish_unrun(task, f"unknown dependency {unknown[0]!r}", now)
            for task_id in build._cycle_members():
                task = tasks[task_id]
                if task.state not in FINISHED:
                    writes += build._finish_unrun(task, "dependency cycle", now)
        for task in tasks.values():
            if task.state == WAITING:
                if task.deps:
                    task.waiting_on = sum(1 for d in task.deps if tasks[d].state != DONE)
                    if any(tasks[d].state == FAILED for d in task.deps):
                        bad = next(d for d in task.deps if tasks[d].state == FAILED)
                        writes += build._finish_unrun(task, f"dependency {bad!r} failed", now)
                        continue
                if task.waiting_on == 0:
                    build._make_ready(task, monotonic)
            elif task.state == RUNNING:
                build.in_use += 1
        # Counted afresh (_finish_unrun above counted its own): one pass, not three.
        n_done = n_failed = 0
        started = False
        for t in tasks.values():
            if t.state == DONE:
                n_done += 1
            elif t.state == FAILED:
                n_failed += 1
            if t.state != WAITING and t.state != READY:
                started = True
        build.n_done, build.n_failed = n_done, n_failed
        if started:
            build.state = "running"
        return build, writes

    def _cycle_members(self) -> set[str]:
        """Tasks that can never become ready because their dependencies loop (Kahn)."""
        indegree = {t.id: sum(1 for d in t.deps if d in self.tasks) for t in self.tasks.values()}
        free = [t for t, n in indegree.items() if n == 0]
        seen = 0
        while free:
            t = free.pop()
            seen += 1
            for d in self.dependants[t]:
                indegree[d] -= 1
                if indegree[d] == 0:
                    free.append(d)
        return {t for t, n in indegree.items() if n > 0} if seen < len(self.tasks) else set()

    def _make_ready(self, task: Task, monotonic: float) -> None:
        task.state = READY
        task.ready_at = monotonic
        self.ready[task.id] = None

    def _finish_unrun(self, task: Task, reason: str, now: float) -> list[tuple[Task, dict]]:
        """Record task (and, transitively, its dependants) as never run."""
        out = []
        stack = [(task, reason)]
        while stack:
            t, why = stack.pop()
            if t.state in FINISHED or t.state in HOLDS_CORE:
                continue
            self.ready.pop(t.id, None)
            t.state = FAILED
            self.n_failed += 1
            t.record = t.not_run_record(why, now)
            out.append((t, t.record))
            stack += [(self.tasks[d], f"dependency {t.id!r} failed") for d in self.dependants[t.id]]
        return out

    # -- transitions (the runtime writes the records returned) ---------------
    def requeue(self, task: Task, monotonic: float) -> None:
        """The task's agent was lost: queue it again. Its next assignment
        gets attempt + 1, and until then no agent's result counts (rule 5)."""
        if task.state in HOLDS_CORE:
            self.in_use -= 1
        task.agent, task.assigned, task.sent = None, None, False
        self._make_ready(task, monotonic)
        # First in its build's queue, not behind the rest of it: it had started, and a
        # 1,000-task build would otherwise make it wait for all the others (a takeover
        # that finds it again, e.g. after a failover, would even push it back each time).
        self.ready.move_to_end(task.id, last=False)

    def assign(self, task: Task, agent: str, now: float) -> dict:
        self.ready.pop(task.id, None)
        task.state, task.agent, task.assigned, task.sent = ASSIGNING, agent, now, False
        task.attempt += 1
        self.in_use += 1
        if self.started is None:
            self.started = now
            self.state = "running"
        return task.running_record()

    def unassign(self, task: Task, monotonic: float) -> None:
        """The running record's write failed, so no agent got the task: queue it
        again. Its attempt number stays used up: the write may have been applied
        although only a timeout was heard (its outcome unknown, store.py), and an
        attempt names one placement (docs/design.md section 3 rule 5)."""
        self.requeue(task, monotonic)

    def result_taken(self, task: Task) -> None:
        """The agent reported the result (now being written): its core is free
        for the scheduler, e.g. for a dependant placed early."""
        if task.state in HOLDS_CORE:
            self.in_use -= 1

    def release_early(self, task: Task, monotonic: float) -> None:
        """Make a waiting task, whose one missing dependency's result is being
        written, ready for this scheduling round only (see hold_back)."""
        self._make_ready(task, monotonic)

    def hold_back(self, task: Task) -> None:
        """Undo release_early (not placed, or its running record's write with its
        dependency's result failed): waiting again. A placement's attempt number
        stays used up, as in unassign (the write may have landed unseen)."""
        self.ready.pop(task.id, None)
        if task.state in HOLDS_CORE:
            self.in_use -= 1
        task.state, task.agent, task.assigned, task.sent = WAITING, None, None, False

    def finished_task(self, task: Task, record: dict, now: float, monotonic: float
                      ) -> list[tuple[Task, dict]]:
        """The task's result is durable: release or fail its dependants.
        Returns the never-run records to write."""
        if task.state in HOLDS_CORE and task.recording is None:
            self.in_use -= 1   # (result_taken freed the core when the result came in)
        task.state, task.record, task.recording = record["state"], record, None
        if task.state == DONE:
            self.n_done += 1
        else:
            self.n_failed += 1
        writes: list[tuple[Task, dict]] = []
        for dep_id in self.dependants[task.id]:
            dep = self.tasks[dep_id]
            if task.state == DONE:
                dep.waiting_on -= 1
                if dep.waiting_on == 0 and dep.state == WAITING:
                    self._make_ready(dep, monotonic)
            else:
                writes += self._finish_unrun(dep, f"dependency {task.id!r} failed", now)
        return writes

    def cancel(self, now: float) -> tuple[list[tuple[Task, dict]], list[Task]]:
        """Cancel the build: every task that has not ended ends now, recorded failed with
        the error "cancelled", except a task whose result is being written (it ends with
        that result) and one being assigned (its running record is in flight: see
        end_assigning). Returns (the records to write, the running tasks whose agents
        must stop them)."""
        self.cancelled = True
        writes: list[tuple[Task, dict]] = []
        stop: list[Task] = []
        for task in self.tasks.values():
            if task.state in FINISHED or task.state == ASSIGNING or task.recording is not None:
                continue
            if task.state == RUNNING:
                stop.append(task)
            writes.append((task, self._end_cancelled(task, now)))
        return writes, stop

    def end_assigning(self, task: Task, now: float) -> list[tuple[Task, dict]]:
        """A task of a cancelled build whose running record has now landed (or failed to):
        it ends cancelled, never sent to its agent."""
        return [(task, self._end_cancelled(task, now))]

    def _end_cancelled(self, task: Task, now: float) -> dict:
        if task.state in HOLDS_CORE:
            self.in_use -= 1
        self.ready.pop(task.id, None)
        task.record = task.cancelled_record(now)
        task.state, task.sent = FAILED, False
        self.n_failed += 1
        return task.record

    # -- status ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {"total": len(self.tasks), "done": self.n_done, "failed": self.n_failed, "running": self.in_use}

    def status_record(self, now: float) -> dict:
        c = self.counts()
        if c["done"] + c["failed"] == c["total"]:
            self.state = CANCELLED if self.cancelled else "failed" if c["failed"] else "done"
            if self.finished is None:
                self.finished = now
            if self.started is None:
                self.started = now
        return dict(c, state=self.state, started=self.started, finished=self.finished)

    @property
    def over(self) -> bool:
        return self.state in BUILD_ENDED


@dataclasses.dataclass(eq=False)
class Agent:
    """An agent as the leader sees it: presence (agents/<name>), admin
    choices (agent-config/<name>) and its stream, if connected."""

    name: str
    present: bool = False
    info: dict = dataclasses.field(default_factory=dict)
    disabled: bool = False
    subscribed: bool | None = None   # None: not decided by an admin
    stream: Any = None               # its agent_protocol.AgentStream once the hello was handled
    cores: int = 0
    running: set = dataclasses.field(default_factory=set)   # task keys holding a core here
    lent: int = 0                    # cores lent to `baton run` builds (lending.py)
    compiling: int = 0               # cores running compile jobs of grants that ended (agent.proto Compiling)

    def eligible(self, auto_subscribe: bool) -> bool:
        return (self.stream is not None and self.present and not self.disabled
                and (auto_subscribe or self.subscribed is True))

    def free(self) -> int:
        return max(0, self.cores - len(self.running) - self.lent - self.compiling)

    def state(self, auto_subscribe: bool) -> str:
        if not self.present:
            return "offline"
        if self.disabled:
            return "disabled"
        if not (auto_subscribe or self.subscribed is True):
            return "unsubscribed"
        return f"busy {len(self.running)}/{self.cores}" if self.running else "idle"


# What one agent may claim: its cores bound its running set, which the runtime key lists.
MAX_CORES = 1024


def presence_cores(info: Any) -> int:
    """The cores an agent's presence value (agents/<name>) offers, 0 if it says nothing usable."""
    try:
        return min(MAX_CORES, max(0, int(info.get("cores") or 0)))
    except (AttributeError, TypeError, ValueError):
        return 0


def sorted_builds(builds: Iterable[Build]) -> list[Build]:
    return sorted(builds, key=lambda b: b.order)


def wall_now() -> float:
    return time.time()
