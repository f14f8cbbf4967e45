"""One epoch of leadership: load, watch, schedule, talk to agents, record.

A `Dispatcher` lives from Runtime.start(epoch) to stop(). One thread owns
all state (state.py objects); everything else — agent streams, watchers,
the group commit's completions — posts events to its queue. That keeps the
rules simple to check:

- a task is marked running (attempt, agent) durably BEFORE its Assignment
  is sent, so a new leader knows who runs what;
- a dependant that a result is about to release may be placed at once: its
  running record then goes in the SAME transaction as that result, so it is
  durable exactly when its dependency is (never before), and the Assignment
  follows the ResultAck without waiting for a second round trip to etcd;
- a result counts only for the task's current attempt on its current agent
  (rule 5), and is acknowledged only once durable; duplicates and stale
  results are acknowledged with recorded=false;
- a lost agent's tasks (agents/<name> deleted, or no hello within `grace`
  after start, or a hello that no longer lists them) run again elsewhere
  with attempt + 1;
- a failed fenced write (NotLeader) stops dispatching at once.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable

import grpc

from cluster.keys import Keys, decode, encode
from cluster.protocol import agent_pb2 as pb
from coordinator.runtime import scheduler
from coordinator.runtime.loading import read_snapshot, read_starting_point
from coordinator.runtime.reporting import Reporter
from coordinator.runtime.service import AgentStream
from coordinator.runtime.state import ASSIGNING, DONE, READY, RUNNING, WAITING, Agent, Build, Task
from coordinator.runtime.store import GroupCommit
from cluster.settings import Settings
from lease.election import Fence
from lease.errors import NotLeader
from lease.watcher import Watcher

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0
RUNTIME_KEY_EVERY = 0.5
RETRY_WRITE_AFTER = 0.5
MAX_RELEASED_EARLY = 64   # dependants per result placed in its transaction (etcd allows 128 ops)
# The successor is named ANNOUNCE_AFTER_MOVE after every present agent has said hello
# here, or ANNOUNCE_SUCCESSOR_AFTER after taking over, not at once: each agent opens a
# Standby stream when it hears the name, and 200 agents doing so while others were still
# moving here (or writing their presence) slowed the move itself (bench/failover.py).
# A handover before that still works, over new streams.
ANNOUNCE_SUCCESSOR_AFTER = 1.0
ANNOUNCE_AFTER_MOVE = 0.2
GOODBYE_AFTER_HANDOVER = 0.5   # s after a planned handover's resignation (see _shutdown)


class Dispatcher:
    def __init__(self, etcd, keys: Keys, name: str, epoch: int, grace: float,
                 clock: Callable[[], float], on_not_leader: Callable[[], None]):
        self.etcd, self.keys, self.name, self.epoch = etcd, keys, name, epoch
        self.grace = grace
        self.clock = clock
        self._on_not_leader = on_not_leader
        self.dispatching = True
        self.store = GroupCommit(etcd, Fence(etcd, keys.leader, epoch), on_not_leader=self._not_leader)
        self.settings = Settings()
        self.builds: dict[str, Build] = {}
        self.finished_builds: set[str] = set()
        self.agents: dict[str, Agent] = {}
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._watchers: list[Watcher] = []
        self._later: list = []            # heap of (when, seq, fn)
        self._seq = itertools.count()
        self._dirty = True                # something changed: run the scheduler
        self._results_to_write: list[Task] = []   # results taken this loop turn, written at its end
        self._outgoing: dict[Any, list] = {}      # stream -> messages sent this loop turn (see _send)
        # (name, gRPC address) of the coordinator expected to lead next, announced to every agent
        # so that each holds a Standby stream to it (agent/link.py) and moving there costs one Hello.
        self._successor: tuple[str, str] | None = None
        self._announcing = False          # the successor may be named (see ANNOUNCE_SUCCESSOR_AFTER)
        self._announce_due = False        # every present agent has moved here
        self._awaiting_hello: set[str] = set()
        self._grace_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.stats = {"agents_connected": 0, "tasks_dispatched": 0, "queued": 0, "running": 0,
                      "released_early": 0, "placed_early": 0}
        self.report = Reporter(etcd, self.store, keys, name, epoch, self.builds, self.finished_builds,
                               clock, self._events.put, self._after)

    # -- lifecycle (called by Runtime) ---------------------------------------------
    def start(self, starting_point: tuple[dict[str, Any], int] | None = None) -> None:
        """Load the starting point (given by a warm Mirror, or read from etcd
        now) and start the watchers and the loop. Raises EtcdUnavailable when
        etcd cannot be read."""
        began = self.clock()
        source = "kept warm"
        if starting_point is None:
            starting_point, source = read_starting_point(self.etcd, self.keys), "read"
        kvs, revision = starting_point
        read = self.clock()
        self._load(kvs)
        loaded = self.clock()
        self._grace_deadline = loaded + self.grace
        self._after(ANNOUNCE_SUCCESSOR_AFTER, self._start_announcing)
        # The loop first: the agents' hellos are waiting. The watchers start from the
        # starting point's revision, so whatever changed meanwhile still comes.
        self._thread = threading.Thread(target=self._loop, name=f"dispatcher epoch {self.epoch}", daemon=True)
        self._thread.start()
        for prefix, kind in ((self.keys.builds, "builds"), (self.keys.agents, "agents"),
                             (self.keys.agent_config, "agent-config"), (self.keys.settings, "settings")):
            watcher = Watcher(self.etcd, prefix, prefix=kind != "settings", start_revision=revision + 1,
                              on_events=lambda events, kind=kind: self._events.put((kind, events)))
            self._watchers.append(watcher.start())
        log.info("epoch %s: starting point %s in %.0f ms (%d keys at revision %d), loaded in %.0f ms "
                 "(%d unfinished builds), watching after %.0f ms", self.epoch, source, (read - began) * 1000,
                 len(kvs), revision, (loaded - read) * 1000, len(self.builds), (self.clock() - began) * 1000)

    def post(self, event: tuple) -> None:
        kind = event[0]
        if kind == "result" and not self.dispatching:
            return  # not recorded once we stop leading (the agent keeps it); would only delay the stop
        if kind == "hello" and self.dispatching:
            # Welcome at once, on the caller's (gRPC) thread: the stream is this epoch's and
            # the agent may count itself moved here. What the Hello lists is settled in the
            # loop, in order, after whatever came before it (tasks it should drop get a
            # Cancel). A new leader's Hellos arrive while it loads its starting point
            # (8-180 ms on a busy machine); the move no longer waits for that.
            event[1].send(self._msg(welcome=pb.Welcome(coordinator=self.name)))
        self._events.put(event)

    def stop(self, reason: str, timeout: float, successor: tuple[str, str] | None = None,
             before_goodbye: Callable[[], None] | None = None) -> None:
        """Stop dispatching, flush writes (acks go out), run before_goodbye
        (a planned handover resigns there), Goodbye every stream.
        successor (name, gRPC address): a planned handover's next leader,
        announced to every agent first so that they can dial it meanwhile."""
        self.dispatching = False
        self._events.put(("stop", reason, timeout, successor, before_goodbye))
        if self._thread is None:
            # Never ran (its load failed): refuse the agents that said hello meanwhile.
            self._refuse_queued(reason)
            _run_step(before_goodbye)
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout + 5)
        # Writes are flushed and the agents told; joining the watcher and writer threads
        # need not hold up a handover (the next leader waits for our resignation).
        threading.Thread(target=self._release, name=f"release epoch {self.epoch}", daemon=True).start()

    def _release(self) -> None:
        for w in self._watchers:
            w.stop()
        self.store.close(timeout=1.0)

    def _refuse_queued(self, reason: str) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "hello":
                event[1].abort(grpc.StatusCode.FAILED_PRECONDITION, f"not leader: {reason}")

    def _not_leader(self) -> None:
        # Called on the group commit's thread: stop handing out work now.
        self.dispatching = False
        log.warning("epoch %s: a fenced write failed, not the leader any more; dispatching stopped", self.epoch)
        threading.Thread(target=self._on_not_leader, name="on-not-leader", daemon=True).start()

    # -- loading --------------------------------------------------------------------
    def _load(self, kvs: dict[str, Any]) -> None:
        snapshot = read_snapshot(kvs, self.keys)
        self.settings = snapshot.settings
        for name, info in snapshot.agents.items():
            agent = self._agent(name)
            agent.present, agent.info = True, info
        for name, raw in snapshot.agent_configs.items():
            self._apply_config(name, raw)
        self.finished_builds |= snapshot.finished
        for b in snapshot.unfinished:
            self._add_build(b.spec, b.order, b.records, b.status)
        for build in self.builds.values():
            for task in build.tasks.values():
                if task.state == RUNNING and task.agent:
                    self._agent(task.agent).running.add(task.key)
                    self._awaiting_hello.add(task.agent)

    def _add_build(self, spec: dict, order: int, records: dict, status: dict) -> None:
        try:
            build, writes = Build.from_spec(spec, order, records, time.time(), self.clock())
        except (KeyError, TypeError, ValueError) as exc:
            log.error("build %s: cannot read its spec (%s); ignored", spec.get("id") if isinstance(spec, dict) else spec, exc)
            return
        build.started = status.get("started") or build.started
        self.builds[build.id] = build
        self._write_records(writes)
        self.report.dirty.add(build.id)

    # -- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        next_heartbeat = next_runtime = self.clock()
        while True:
            now = self.clock()
            wait = min(next_heartbeat, next_runtime, self._later[0][0] if self._later else now + 1) - now
            try:
                event = self._events.get(timeout=max(0.0, wait))
                events = [event]
                while True:
                    try:
                        events.append(self._events.get_nowait())
                    except queue.Empty:
                        break
            except queue.Empty:
                events = []
            for i, event in enumerate(events):
                if event[0] == "stop":
                    self._shutdown(event[1], event[2], events[i + 1:], event[3], event[4])
                    return
                try:
                    self._handle(event)
                except Exception:  # noqa: BLE001 - one bad event must not stop the leader
                    log.exception("dispatcher: handling %s failed", event[0])
            now = self.clock()
            try:
                while self._later and self._later[0][0] <= now:
                    heapq.heappop(self._later)[2]()
                if self._awaiting_hello and now >= self._grace_deadline:
                    self._grace_expired()
                self._schedule_and_record()
                self.report.write_statuses()
                if now >= next_heartbeat:
                    next_heartbeat = now + HEARTBEAT_EVERY
                    self._heartbeat()
                if now >= next_runtime:
                    next_runtime = now + RUNTIME_KEY_EVERY
                    self.report.write_runtime(self.agents, self.settings.auto_subscribe)
                    self.stats["queued"], self.stats["running"] = self.report.task_counts()
                self._flush_outgoing()
            except Exception:  # noqa: BLE001 - a bug must not silently end leadership's work
                log.exception("dispatcher: loop turn failed")

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "hello":
            self._hello(event[1], event[2])
        elif kind == "result":
            self._result(event[1], event[2])
        elif kind == "gone":
            agent = self.agents.get(event[1].agent)
            if agent is not None and agent.stream is event[1]:
                agent.stream = None
                self._dirty = True
        elif kind == "assigned":
            self._assigned(*event[1:])
        elif kind == "recorded":
            self._recorded(*event[1:])
        elif kind == "final-status":
            self.report.final_status_written(event[1], event[2])
        elif kind == "retry-if-failed":
            self._retry_if_failed(event[1], event[2])
        elif kind == "runtime-written":
            self.report.runtime_written(event[1])
        elif kind == "builds":
            self._builds_changed(event[1])
        elif kind == "agents":
            self._agents_changed(event[1])
        elif kind == "agent-config":
            for e in event[1]:
                self._apply_config(Keys.name_of(e.key, self.keys.agent_config), e.value)
            self._dirty = True
        elif kind == "successor":
            if event[1] != self._successor:
                self._successor = event[1]
                if event[1] is not None and self._announcing:
                    self._send_all(self._successor_msg())
        elif kind == "settings":
            self.settings = Settings.from_json(event[1][-1].value)
            self._dirty = True

    def _shutdown(self, reason: str, timeout: float, pending: list[tuple],
                  successor: tuple[str, str] | None = None,
                  before_goodbye: Callable[[], None] | None = None) -> None:
        """No new work; let in-flight writes land so their acks (and
        assignments) go out before the Goodbye. Results that arrive now are
        not recorded: the agents keep them for the next leader.

        before_goodbye runs once the writes have landed and before the
        Goodbyes: a planned handover resigns there, so that the next leader
        can start while this process is not yet busy ending 200 streams
        (the agents move on their leader-key watch, not on the Goodbye)."""
        self.dispatching = False
        deadline = self.clock() + timeout
        if successor is not None and (successor != self._successor or not self._announcing):
            self._successor, self._announcing = successor, True
            self._send_all(self._successor_msg())
        for task in self._results_to_write:   # taken before the stop: their acks can still go out
            self._write_result(task)
        self._results_to_write = []
        while pending or (self.clock() < deadline and (self.store.pending() or not self._events.empty())):
            if pending:
                event = pending.pop(0)
            else:
                try:
                    event = self._events.get(timeout=0.01)
                except queue.Empty:
                    continue
            try:
                if event[0] in ("recorded", "assigned", "gone", "final-status", "runtime-written"):
                    self._handle(event)
                elif event[0] == "hello":
                    event[1].abort(grpc.StatusCode.FAILED_PRECONDITION, f"not leader: {reason}")
            except Exception:  # noqa: BLE001 - stopping must finish
                log.exception("dispatcher: handling %s while stopping failed", event[0])
            self._flush_outgoing()
        self.report.write_statuses(force=True)
        self.report.write_runtime(self.agents, self.settings.auto_subscribe)
        self.store.flush(max(0.0, deadline - self.clock()))
        self._flush_outgoing()
        _run_step(before_goodbye)
        streams = [agent.stream for agent in self.agents.values() if agent.stream is not None]
        for agent in self.agents.values():
            agent.stream = None
        if before_goodbye is None:
            _say_goodbye(streams, reason)
        else:
            # A planned handover: the agents are moving to the next leader on their
            # leader-key watch, and close these streams as they go. Ending 200 streams
            # here now would take this process's CPU (~100 ms) from the machine while
            # they move; the Goodbye is only for the stragglers, so it waits a moment.
            timer = threading.Timer(GOODBYE_AFTER_HANDOVER, _say_goodbye, (streams, reason))
            timer.daemon = True
            timer.start()
        self._stopped.set()

    # -- agents ---------------------------------------------------------------------------
    def _agent(self, name: str) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            agent = self.agents[name] = Agent(name)
        return agent

    def _apply_config(self, name: str, raw: bytes | None) -> None:
        cfg = decode(raw) or {}
        agent = self._agent(name)
        agent.disabled = bool(cfg.get("disabled", False))
        agent.subscribed = cfg.get("subscribed")

    def _agents_changed(self, events: list) -> None:
        for e in events:
            agent = self._agent(Keys.name_of(e.key, self.keys.agents))
            if e.type == "put":
                agent.present = True
                agent.info = decode(e.value) or {}
            else:
                agent.present = False
                self._lose_tasks(agent, "the agent's presence key was deleted")
        self._dirty = True

    def _lose_tasks(self, agent: Agent, why: str, keep: set | frozenset = frozenset()) -> None:
        """The agent no longer runs these tasks: queue them again (attempt + 1)."""
        for key in list(agent.running):
            task = self._task(key)
            if key in keep or task is None:
                continue
            if task.recording is not None or task.state not in (RUNNING, ASSIGNING) or task.agent != agent.name:
                agent.running.discard(key)
                continue
            if task.state == ASSIGNING:
                continue  # the write in flight will find the agent gone (see _assigned)
            log.info("task %s/%s attempt %s on %s: %s; it runs again", *key, task.attempt, agent.name, why)
            agent.running.discard(key)
            if agent.stream is not None and task.sent:
                self._send(agent.stream, self._msg(cancel=pb.Cancel(task=_ref(task))))
            self.builds[task.build_id].requeue(task, self.clock())
            self.report.dirty.add(task.build_id)
        self._dirty = True

    def _grace_expired(self) -> None:
        for name in self._awaiting_hello:
            self._lose_tasks(self._agent(name), f"no hello within {self.grace:g} s of the new leader")
        self._awaiting_hello.clear()

    def _hello(self, stream: AgentStream, hello: pb.Hello) -> None:
        if not self.dispatching:
            stream.abort(grpc.StatusCode.FAILED_PRECONDITION, "not leader")
            return
        agent = self._agent(hello.name)
        if agent.stream is not None and agent.stream is not stream:
            self._end(agent.stream, "replaced by a newer connection from the same agent")
        agent.stream = stream
        agent.cores = hello.cores or int(agent.info.get("cores") or 0)
        self._awaiting_hello.discard(agent.name)
        keep = set()
        for ref in hello.running:
            task = self._task((ref.build_id, ref.task_id))
            if (task is not None and task.state == RUNNING and task.attempt == ref.attempt
                    and task.agent == agent.name and task.recording is None):
                task.sent = True
                keep.add(task.key)
                agent.running.add(task.key)
            else:
                self._send(stream, self._msg(cancel=pb.Cancel(
                    task=pb.TaskRef(build_id=ref.build_id, task_id=ref.task_id, attempt=ref.attempt))))
        for result in hello.results:
            task = self._task((result.task.build_id, result.task.task_id))
            if task is not None and task.attempt == result.task.attempt and task.agent == agent.name:
                keep.add(task.key)
        if self._successor is not None and self._announcing:
            self._send(stream, self._successor_msg())
        elif (not self._announcing and not self._announce_due
              and all(a.stream is not None for a in self.agents.values() if a.present)):
            # The move here is over; the last agents' presence writes are still under way.
            self._announce_due = True
            self._after(ANNOUNCE_AFTER_MOVE, self._start_announcing)
        # What we believe runs there but the agent neither runs nor finished is lost.
        self._lose_tasks(agent, "the agent's hello does not list it", keep=keep)
        for result in hello.results:
            self._result(stream, result)
        self._dirty = True

    def _heartbeat(self) -> None:
        beat = self._msg(heartbeat=pb.Heartbeat(sent_unix_ns=time.time_ns()))
        connected = 0
        for agent in self.agents.values():
            if agent.stream is not None:
                connected += 1
                self._send(agent.stream, beat)
        self.stats["agents_connected"] = connected

    # -- builds and scheduling ---------------------------------------------------------
    def _builds_changed(self, events: list) -> None:
        for e in events:
            build_id = Keys.name_of(e.key, self.keys.builds)
            if e.type != "put" or build_id in self.builds or build_id in self.finished_builds:
                continue
            self._add_build(decode(e.value), e.create_revision, {}, {})
        self._dirty = True

    def _schedule_and_record(self) -> None:
        """End of a loop turn: place ready tasks, then write this turn's
        results, each together with the running records of the dependants it
        releases that were placed now (see _release_early)."""
        results, self._results_to_write = self._results_to_write, []
        early = self._release_early(results) if self.dispatching else {}
        joined: dict[tuple, list] = {key: [] for key in {t.key for t in early.values()}}
        if (self._dirty or early) and self.dispatching:
            self._dirty = False
            self._schedule(early, joined)
        self.stats["released_early"] += len(early)
        self.stats["placed_early"] += sum(len(placed) for placed in joined.values())
        for key in early:
            task = self._task(key)
            if task.state == READY:  # not placed: it waits for the result to be durable, as usual
                self.builds[task.build_id].hold_back(task)
        for task in results:
            self._write_result(task, joined.get(task.key, ()))

    def _release_early(self, results: list[Task]) -> dict[tuple, Task]:
        """Dependants whose last missing dependency is one of these successful
        results: made ready now, to be placed only in this turn."""
        early: dict[tuple, Task] = {}
        for task in results:
            if task.recording[0]["state"] != DONE:
                continue
            build = self.builds[task.build_id]
            for dep_id in build.dependants[task.id][:MAX_RELEASED_EARLY]:
                dep = build.tasks[dep_id]
                if dep.state == WAITING and dep.waiting_on == 1 and dep.key not in early:
                    build.release_early(dep, self.clock())
                    early[dep.key] = task
        return early

    def _schedule(self, early: dict[tuple, Task], joined: dict[tuple, list]) -> None:
        waiting = [b for b in self.builds.values() if b.ready]
        if not waiting:
            return
        auto = self.settings.auto_subscribe
        free = {}
        for a in self.agents.values():
            if a.stream is not None and a.cores > len(a.running) and a.eligible(auto):
                free[a.name] = a.cores - len(a.running)
        total = sum(free.values())
        if not total:
            return
        demands = [scheduler.BuildDemand(b.id, list(itertools.islice(b.ready, total)), b.in_use)
                   for b in waiting]
        now = time.time()
        prefer = {key: dependency.agent for key, dependency in early.items()}
        for p in scheduler.schedule(demands, free, self.settings.max_cores_per_build, prefer):
            build = self.builds[p.build_id]
            task = build.tasks[p.task_id]
            record = build.assign(task, p.agent, now)
            self.agents[p.agent].running.add(task.key)
            dependency = early.get(task.key)
            if dependency is not None:
                joined[dependency.key].append((task, p.agent, task.attempt, self._task_put(task, record)))
            else:
                future = self.store.submit([self._task_put(task, record)])
                future.add_done_callback(lambda f, t=task, a=p.agent, n=task.attempt:
                                         self._events.put(("assigned", t, a, n, f)))
            self.report.dirty.add(build.id)

    def _task_put(self, task: Task, record: dict):
        """The put of a task record, signed with who wrote it under which epoch, so an
        audit of etcd's history can show that no two coordinators wrote under one epoch."""
        return self.etcd.ops.put(self.keys.task(*task.key),
                                 encode(dict(record, epoch=self.epoch, coordinator=self.name)))

    def _assigned(self, task: Task, agent_name: str, attempt: int, future) -> None:
        if task.state != ASSIGNING or task.attempt != attempt or task.agent != agent_name:
            return  # superseded while the write was in flight
        agent = self.agents[agent_name]
        build = self.builds.get(task.build_id)
        error = future.exception()
        if error is not None:
            if not isinstance(error, NotLeader):
                agent.running.discard(task.key)
                if task.waiting_on:
                    # Placed early with its dependency's result, which did not land either.
                    build.hold_back(task)
                else:
                    log.warning("task %s/%s: marking it running failed (%s); queued again", *task.key, error)
                    build.unassign(task, self.clock())
                self._dirty = True
            return
        task.state = RUNNING
        if agent.stream is None or not agent.present:
            # Durably "running on agent" but nobody got it: run it again, attempt + 1.
            agent.running.discard(task.key)
            build.requeue(task, self.clock())
            self._dirty = True
            return
        task.sent = True
        self.stats["tasks_dispatched"] += 1
        self._send(agent.stream, self._msg(assign=pb.Assignment(task=_ref(task), cmd=task.cmd, timeout=task.timeout,
                                                         env=task.env)))

    # -- results ---------------------------------------------------------------------------
    def _result(self, stream: AgentStream, result: pb.TaskResult) -> None:
        ref = result.task
        task = self._task((ref.build_id, ref.task_id))
        current = (task is not None and task.state == RUNNING and task.attempt == ref.attempt
                   and task.agent == stream.agent)
        if current and task.recording is not None:
            task.recording[1].append((stream, False))  # a duplicate while the first is being written
            return
        if not current:
            self._send(stream, self._msg(ack=pb.ResultAck(task=ref, recorded=False)))
            return
        record = task.result_record(ref_exit(result), result.duration,
                                    result.output_tail.decode("utf-8", "replace"), result.error, time.time())
        task.recording = (record, [(stream, True)])
        self.builds[task.build_id].result_taken(task)
        agent = self.agents.get(stream.agent)
        if agent is not None:
            agent.running.discard(task.key)  # the core is free now; dependants wait for durability
        self._results_to_write.append(task)   # at the end of this turn, see _schedule_and_record
        self._dirty = True

    def _write_result(self, task: Task, placed: Iterable[tuple] = ()) -> None:
        """Write the result (with the running records of dependants placed
        early: one transaction, so all land or none)."""
        placed = list(placed)
        future = self.store.submit([self._task_put(task, task.recording[0])] + [op for *_, op in placed])
        future.add_done_callback(lambda f: self._events.put(("recorded", task, f, [p[:3] for p in placed])))

    def _recorded(self, task: Task, future, placed: list[tuple] = ()) -> None:
        """The result's write resolved; so did the running records of the dependants
        placed with it (dependant, agent, attempt), handled right after in the same
        turn, so the ack and their Assignments go out together."""
        self._record_result(task, future)
        for dependant, agent, attempt in placed:
            self._assigned(dependant, agent, attempt, future)

    def _record_result(self, task: Task, future) -> None:
        error = future.exception()
        if error is not None:
            if not isinstance(error, NotLeader) and not self._stopped.is_set():
                log.warning("task %s/%s: recording the result failed (%s); retrying", *task.key, error)
                self._after(RETRY_WRITE_AFTER, lambda: self._write_result(task))
            return  # NotLeader: no ack, the agent keeps the result for the next leader
        record, waiters = task.recording
        build = self.builds[task.build_id]
        for stream, first in waiters:
            self._send(stream, self._msg(ack=pb.ResultAck(task=_ref(task), recorded=first)))
        self._write_records(build.finished_task(task, record, time.time(), self.clock()))
        self.report.dirty.add(build.id)
        self._dirty = True

    def _write_records(self, writes: list[tuple[Task, dict]]) -> None:
        """Never-run records; retried until durable (or we stop leading)."""
        for i in range(0, len(writes), 100):
            chunk = writes[i:i + 100]
            future = self.store.submit([self._task_put(t, rec) for t, rec in chunk])
            future.add_done_callback(lambda f, c=chunk: self._events.put(("retry-if-failed", f, c)))
        for t, _ in writes:
            self.report.dirty.add(t.build_id)

    def _retry_if_failed(self, future, writes: list[tuple[Task, dict]]) -> None:
        error = future.exception()
        if error is not None and not isinstance(error, NotLeader) and not self._stopped.is_set():
            log.warning("writing %d never-run task records failed (%s); retrying", len(writes), error)
            self._after(RETRY_WRITE_AFTER, lambda: self._write_records(writes))

    # -- helpers ---------------------------------------------------------------------------------
    def _send(self, stream, message: pb.CoordinatorMessage) -> None:
        """Queue a message for the end of this loop turn: then each stream gets
        all of its messages at once (one write: an ack and the Assignment it
        released travel together, see aio_service)."""
        queued = self._outgoing.get(stream)
        if queued is None:
            self._outgoing[stream] = [message]
        else:
            queued.append(message)

    def _flush_outgoing(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        for stream, messages in outgoing.items():
            stream.send_all(messages)

    def _end(self, stream, reason: str) -> None:
        messages = self._outgoing.pop(stream, None)
        if messages:
            stream.send_all(messages)
        stream.end(reason)

    def _start_announcing(self) -> None:
        if self._announcing:
            return
        self._announcing = True
        if self._successor is not None:
            self._send_all(self._successor_msg())

    def _successor_msg(self) -> pb.CoordinatorMessage:
        name, address = self._successor
        return self._msg(successor=pb.Successor(name=name, grpc=address))

    def _send_all(self, message: pb.CoordinatorMessage) -> None:
        for agent in self.agents.values():
            if agent.stream is not None:
                self._send(agent.stream, message)

    def _task(self, key: tuple[str, str]) -> Task | None:
        build = self.builds.get(key[0])
        return None if build is None else build.tasks.get(key[1])

    def _msg(self, **body: Any) -> pb.CoordinatorMessage:
        return pb.CoordinatorMessage(epoch=self.epoch, **body)

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._later, (self.clock() + delay, next(self._seq), fn))


def _say_goodbye(streams: list, reason: str) -> None:
    for stream in streams:
        stream.end(reason)


def _run_step(step: Callable[[], None] | None) -> None:
    if step is None:
        return
    try:
        step()
    except Exception:  # noqa: BLE001 - stopping must finish; the caller's step logs its own failure
        log.exception("dispatcher: the step before the goodbyes failed")


def _ref(task: Task) -> pb.TaskRef:
    return pb.TaskRef(build_id=task.build_id, task_id=task.id, attempt=task.attempt)


def ref_exit(result: pb.TaskResult) -> int | None:
    """The exit code, or None when the task could not run at all."""
    return None if result.error and result.exit_code == 0 else result.exit_code


