"""One epoch of leadership: load, watch, schedule, talk to agents, record.

A `Dispatcher` lives from Runtime.start(epoch) to stop(). One thread owns
all state (state.py objects); everything else — agent streams, watchers,
the group commit's completions — posts `inbox` events to its queue, each
handled by one method. That keeps the rules simple to check. Its parts:

- this module: the lifecycle (load, start, stop and its shutdown) and the
  loop;
- agents.py (`AgentRoster`): hellos, stream ends, presence, the grace timer
  after a takeover, naming the successor; a lost agent's tasks run again
  elsewhere with attempt + 1;
- results.py (`ResultRecording`): placing tasks, taking results, early
  release, and the rule that a record is durable before the agent hears of
  it;
- cancelling.py (`BuildCancelling`): acting on build-cancel/<id>;
- lending.py (`CoreLending`): helper cores lent to `baton run` builds;
- run_records.py (`RunRecording`): the records of `baton run` builds and their jobs;
- outbox.py (`Outbox`): the messages of one loop turn, one write per stream.

A failed fenced write (NotLeader) stops dispatching at once.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable

import grpc

from cluster.keys import Keys, decode
from cluster.protocol import agent_pb2 as pb
from cluster.settings import Settings
from coordinator.runtime import inbox
from coordinator.runtime.agents import AgentRoster
from coordinator.runtime.cancelling import BuildCancelling
from coordinator.runtime.lending import CoreLending
from coordinator.runtime.loading import read_snapshot, read_starting_point
from coordinator.runtime.metrics import Metrics
from coordinator.runtime.outbox import Outbox
from coordinator.runtime.reporting import Reporter
from coordinator.runtime.results import ResultRecording
from coordinator.runtime.run_records import CHECK_EVERY, RUN, RunRecording
from coordinator.runtime.state import RUNNING, Agent, Build, Task
from coordinator.runtime.store import GroupCommit
from lease.election import Fence
from lease.watcher import Watcher

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0
RUNTIME_KEY_EVERY = 0.5
ANNOUNCE_SUCCESSOR_AFTER = 1.0   # s after taking over, at the latest (see agents.ANNOUNCE_AFTER_MOVE)
GOODBYE_AFTER_HANDOVER = 0.5   # s after a planned handover's resignation (see _shutdown)

# Handled while stopping: the writes in flight land (acks go out), the rest waits for the next leader.
_WHILE_STOPPING = (inbox.ResultWritten, inbox.RunningWritten, inbox.StreamGone, inbox.FinalStatusWritten,
                   inbox.RuntimeKeyWritten, inbox.RunWritten)
RUN_ABANDON_AFTER = 60.0   # s; the Runtime passes Timings.run_abandon (run_records.py)


class Dispatcher(AgentRoster, ResultRecording, BuildCancelling, CoreLending, RunRecording):
    def __init__(self, etcd, keys: Keys, name: str, epoch: int, grace: float,
                 clock: Callable[[], float], on_not_leader: Callable[[], None], metrics: Metrics | None = None,
                 run_abandon: float = RUN_ABANDON_AFTER):
        self.etcd, self.keys, self.name, self.epoch = etcd, keys, name, epoch
        self.metrics = metrics if metrics is not None else Metrics()  # the Runtime's: outlives this epoch
        self.grace = grace
        self.clock = clock
        self._on_not_leader = on_not_leader
        self.dispatching = True
        self.store = GroupCommit(etcd, Fence(etcd, keys.leader, epoch), on_not_leader=self._not_leader,
                                 observe_txn=self.metrics.etcd_txn.observe)
        self.settings = Settings()
        self.builds: dict[str, Build] = {}
        self.finished_builds: set[str] = set()
        self._cancels_waiting: set[str] = set()
        self.agents: dict[str, Agent] = {}
        self.wants, self._wants_by_stream = {}, {}
        self._lends_out, self._grants_out, self._grant_ids = {}, {}, []
        self.runs = {}
        self.abandon_after = run_abandon
        self.outbox = Outbox(epoch)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.post_event: Callable[[inbox.Event], None] = self._events.put
        self._watchers: list[Watcher] = []
        self._later: list = []            # heap of (when, seq, fn)
        self._seq = itertools.count()
        self._dirty = True                # something changed: run the scheduler
        self._results_to_write: list[Task] = []
        self._successor: tuple[str, str] | None = None
        self._announcing = False
        self._announce_due = False
        self._awaiting_hello: set[str] = set()
        self._grace_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.stats = {"agents_connected": 0, "tasks_dispatched": 0, "queued": 0, "running": 0,
                      "released_early": 0, "placed_early": 0}
        self.report = Reporter(etcd, self.store, keys, name, epoch, self.builds, self.finished_builds,
                               clock, self.post_event, self._after)
        # One handler per kind of event (Stop is the loop's own).
        self._handlers: dict[type, Callable[[Any], None]] = {
            inbox.HelloReceived: self._on_hello,
            inbox.ResultReceived: self._on_result,
            inbox.StreamGone: self._on_stream_gone,
            inbox.RunningWritten: self._on_running_written,
            inbox.ResultWritten: self._on_result_written,
            inbox.NeverRunWritten: self._on_never_run_written,
            inbox.FinalStatusWritten: self.report.final_status_written,
            inbox.RuntimeKeyWritten: self.report.runtime_written,
            inbox.BuildsChanged: self._on_builds_changed,
            inbox.CancelsChanged: self._on_cancels_changed,
            inbox.AgentsChanged: self._on_agents_changed,
            inbox.AgentConfigChanged: self._on_agent_config_changed,
            inbox.SettingsChanged: self._on_settings_changed,
            inbox.SuccessorNamed: self._on_successor_named,
            inbox.CoresWanted: self._on_cores_wanted,
            inbox.CoresGone: self._on_cores_gone,
            inbox.RunReported: self._on_run_reported,
            inbox.RunWritten: self._on_run_written,
            inbox.CompilingChanged: self._on_compiling_changed,
        }

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
        self._after(CHECK_EVERY, self._watch_runs)
        # The loop first: the agents' hellos are waiting. The watchers start from the
        # starting point's revision, so whatever changed meanwhile still comes.
        self._thread = threading.Thread(target=self._loop, name=f"dispatcher epoch {self.epoch}", daemon=True)
        self._thread.start()
        for prefix, changed in ((self.keys.builds, inbox.BuildsChanged),
                                (self.keys.build_cancels, inbox.CancelsChanged), (self.keys.agents, inbox.AgentsChanged),
                                (self.keys.agent_config, inbox.AgentConfigChanged),
                                (self.keys.settings, inbox.SettingsChanged)):
            watcher = Watcher(self.etcd, prefix, prefix=changed is not inbox.SettingsChanged,
                              start_revision=revision + 1,
                              on_events=lambda events, changed=changed: self._events.put(changed(events)))
            self._watchers.append(watcher.start())
        log.info("epoch %s: starting point %s in %.0f ms (%d keys at revision %d), loaded in %.0f ms "
                 "(%d unfinished builds), watching after %.0f ms", self.epoch, source, (read - began) * 1000,
                 len(kvs), revision, (loaded - read) * 1000, len(self.builds), (self.clock() - began) * 1000)

    def post(self, event: inbox.Event) -> None:
        """From any thread."""
        kind = type(event)
        if kind is inbox.ResultReceived and not self.dispatching:
            return  # not recorded once we stop leading (the agent keeps it); would only delay the stop
        if kind is inbox.HelloReceived and self.dispatching:
            # Welcome at once, on the caller's (gRPC) thread: the stream is this epoch's and
            # the agent may count itself moved here. What the Hello lists is settled in the
            # loop, in order, after whatever came before it (tasks it should drop get a
            # Cancel). A new leader's Hellos arrive while it loads its starting point
            # (8-180 ms on a busy machine); the move no longer waits for that.
            event.stream.send(self.outbox.message(welcome=pb.Welcome(coordinator=self.name)))
        self._events.put(event)

    def stop(self, reason: str, timeout: float, successor: tuple[str, str] | None = None,
             before_goodbye: Callable[[], None] | None = None) -> None:
        """Stop dispatching, flush writes (acks go out), run before_goodbye
        (a planned handover resigns there), Goodbye every stream.
        successor (name, gRPC address): a planned handover's next leader,
        announced to every agent first so that they can dial it meanwhile."""
        self.dispatching = False
        self._events.put(inbox.Stop(reason, timeout, successor, before_goodbye))
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
            if type(event) in (inbox.HelloReceived, inbox.CoresWanted):
                event.stream.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not leader: {reason}")

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
        self._cancels_waiting |= snapshot.cancels
        for b in snapshot.unfinished:
            if isinstance(b.spec, dict) and b.spec.get("kind") == RUN:
                self._load_run(b.spec, b.status)   # its initiator reports to us again (run_records.py)
            else:
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
        self._cancel_if_asked(build)   # before _load counts its running tasks: a cancelled one runs no more

    def _on_builds_changed(self, event: inbox.BuildsChanged) -> None:
        for e in event.events:
            build_id = Keys.name_of(e.key, self.keys.builds)
            if e.type != "put" or build_id in self.builds or build_id in self.finished_builds \
                    or build_id in self.runs:
                continue
            spec = decode(e.value)
            if isinstance(spec, dict) and spec.get("kind") == RUN:
                continue   # a run build: recorded by the leader itself (run_records.py)
            self._add_build(spec, e.create_revision, {}, {})
        self._dirty = True

    def _on_settings_changed(self, event: inbox.SettingsChanged) -> None:
        self.settings = Settings.from_json(event.events[-1].value)
        self._dirty = True

    # -- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        next_heartbeat = next_runtime = self.clock()
        handlers = self._handlers
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
                if type(event) is inbox.Stop:
                    self._shutdown(event, events[i + 1:])
                    return
                try:
                    handlers[type(event)](event)
                except Exception:  # noqa: BLE001 - one bad event must not stop the leader
                    log.exception("dispatcher: handling %s failed", type(event).__name__)
            now = self.clock()
            try:
                while self._later and self._later[0][0] <= now:
                    heapq.heappop(self._later)[2]()
                if self._awaiting_hello and now >= self._grace_deadline:
                    self._grace_expired()
                self._schedule_and_record()
                self.report.write_statuses()
                self._write_run_statuses()
                if now >= next_heartbeat:
                    next_heartbeat = now + HEARTBEAT_EVERY
                    self._heartbeat()
                if now >= next_runtime:
                    next_runtime = now + RUNTIME_KEY_EVERY
                    self.report.write_runtime(self.agents, self.settings.auto_subscribe)
                    self.stats["queued"], self.stats["running"] = self.report.task_counts()
                self._send_lending()
                self.outbox.flush()
            except Exception:  # noqa: BLE001 - a bug must not silently end leadership's work
                log.exception("dispatcher: loop turn failed")

    def _shutdown(self, stop: inbox.Stop, pending: list[inbox.Event]) -> None:
        """No new work; let in-flight writes land so their acks (and
        assignments) go out before the Goodbye. Results that arrive now are
        not recorded: the agents keep them for the next leader.

        stop.before_goodbye runs once the writes have landed and before the
        Goodbyes: a planned handover resigns there, so that the next leader
        can start while this process is not yet busy ending 200 streams
        (the agents move on their leader-key watch, not on the Goodbye)."""
        reason, successor = stop.reason, stop.successor
        self.dispatching = False
        deadline = self.clock() + stop.timeout
        if successor is not None and (successor != self._successor or not self._announcing):
            self._successor, self._announcing = successor, True
            self._announce_successor()
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
                if isinstance(event, _WHILE_STOPPING):
                    self._handlers[type(event)](event)
                elif type(event) in (inbox.HelloReceived, inbox.CoresWanted):
                    event.stream.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not leader: {reason}")
            except Exception:  # noqa: BLE001 - stopping must finish
                log.exception("dispatcher: handling %s while stopping failed", type(event).__name__)
            self._send_lending()
            self.outbox.flush()
        self.report.write_statuses(force=True)
        self.report.write_runtime(self.agents, self.settings.auto_subscribe)
        self.store.flush(max(0.0, deadline - self.clock()))
        self._send_lending()
        self.outbox.flush()
        _run_step(stop.before_goodbye)
        self._end_lending()
        streams = [agent.stream for agent in self.agents.values() if agent.stream is not None]
        for agent in self.agents.values():
            agent.stream = None
        if stop.before_goodbye is None:
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
