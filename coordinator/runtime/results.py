"""The dispatcher's task records: placing ready tasks, taking results, and
writing both durably before the agent hears of them.

Mixed into `dispatcher.Dispatcher` and run on its loop thread only. The
rules:

- a task is marked running (attempt, agent) durably BEFORE its Assignment
  is sent, so a new leader knows who runs what;
- a dependant that a result is about to release may be placed at once (early
  release): its running record then goes in the SAME transaction as that
  result, so it is durable exactly when its dependency is (never before), and
  the Assignment follows the ResultAck without waiting for a second round
  trip to etcd;
- a result counts only for the task's current attempt on its current agent
  (rule 5), and is acknowledged only once durable; duplicates and stale
  results are acknowledged with recorded=false;
- an end record (a result, a never-run or cancelled end) is written with
  `once=True` (coordinator/runtime/store.py): a write that timed out may
  have landed, and its retry must not end the attempt a second time.
  Running records need no such guard: after a failed one the task is placed
  again under a new attempt number (state.Build.unassign, hold_back), never
  the same record, and never the same attempt: the failed one may have
  landed unseen, and an attempt names one placement (rule 5).
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Iterable

from cluster.keys import encode
from cluster.protocol import agent_pb2 as pb
from coordinator.runtime import inbox, scheduler
from coordinator.runtime.agent_protocol import AgentStream
from coordinator.runtime.agents import task_ref
from coordinator.runtime.epoch_state import EpochState
from coordinator.runtime.lending import RUN_PREFIX
from coordinator.runtime.state import ASSIGNING, DONE, READY, RUNNING, WAITING, Task
from lease.errors import NotLeader

log = logging.getLogger("coordinator.runtime.dispatcher")   # these are the dispatcher's own log lines

RETRY_WRITE_AFTER = 0.5
MAX_RELEASED_EARLY = 64   # dependants per result placed in its transaction (etcd allows 128 ops)


class ResultRecording(EpochState):
    """The task records' side of the Dispatcher (see the module docstring). Also
    uses CoreLending's (lending.py) to share the cores with `baton run` builds."""

    # -- placing ready tasks -------------------------------------------------------------
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
        self._end_unusable_lends()
        waiting = [b for b in self.builds.values() if b.ready]
        if not waiting and not self.wants:
            return
        auto = self.settings.auto_subscribe
        free = {}
        for a in self.agents.values():
            if a.stream is not None and a.eligible(auto):
                n = a.free()
                if n:
                    free[a.name] = n   # lent cores run no tasks (lending.py)
        total = sum(free.values())
        if not total:
            return
        lend_demands, prefer = self._lend_demands(total, free)
        demands = [scheduler.BuildDemand(b.id, list(itertools.islice(b.ready, total)), b.in_use)
                   for b in waiting] + lend_demands
        now = time.time()
        prefer.update({key: dependency.agent for key, dependency in early.items()})
        post = self.post_event
        lends = []
        for p in scheduler.schedule(demands, free, self.settings.max_cores_per_build, prefer):
            if p.build_id.startswith(RUN_PREFIX):
                lends.append(p)
                continue
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
                                         post(inbox.RunningWritten(t, a, n, f)))
            self.report.dirty.add(build.id)
        self._lend(lends)

    def _task_put(self, task: Task, record: dict):
        """The put of a task record, signed with who wrote it under which epoch, so an
        audit of etcd's history can show that no two coordinators wrote under one epoch."""
        return self.etcd.ops.put(self.keys.task(*task.key),
                                 encode(dict(record, epoch=self.epoch, coordinator=self.name)))

    def _on_running_written(self, event: inbox.RunningWritten) -> None:
        self._running_written(event.task, event.agent, event.attempt, event.future)

    def _running_written(self, task: Task, agent_name: str, attempt: int, future) -> None:
        if task.state != ASSIGNING or task.attempt != attempt or task.agent != agent_name:
            return  # superseded while the write was in flight
        agent = self.agents[agent_name]
        build = self.builds.get(task.build_id)
        error = future.exception()
        if build.cancelled and not isinstance(error, NotLeader):
            # Cancelled while its running record was in flight: it ends here, never sent.
            agent.running.discard(task.key)
            self._write_records(build.end_assigning(task, time.time()))
            self._dirty = True
            return
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
        self.outbox.send(agent.stream, self.outbox.message(assign=pb.Assignment(
            task=task_ref(task), cmd=task.cmd, timeout=task.timeout, env=task.env)))

    # -- results ---------------------------------------------------------------------------
    def _on_result(self, event: inbox.ResultReceived) -> None:
        self._result(event.stream, event.result)

    def _result(self, stream: AgentStream, result: pb.TaskResult) -> None:
        ref = result.task
        task = self._task((ref.build_id, ref.task_id))
        current = (task is not None and task.state == RUNNING and task.attempt == ref.attempt
                   and task.agent == stream.agent)
        if current and task.recording is not None:
            task.recording[1].append((stream, False))  # a duplicate while the first is being written
            return
        if not current:
            self.outbox.send(stream, self.outbox.message(ack=pb.ResultAck(task=ref, recorded=False)))
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
        future = self.store.submit([self._task_put(task, task.recording[0])] + [op for *_, op in placed], once=True)
        post = self.post_event
        future.add_done_callback(lambda f: post(inbox.ResultWritten(task, f, [p[:3] for p in placed])))

    def _on_result_written(self, event: inbox.ResultWritten) -> None:
        """The result's write resolved; so did the running records of the dependants
        placed with it (dependant, agent, attempt), handled right after in the same
        turn, so the ack and their Assignments go out together."""
        self._record_result(event.task, event.future)
        for dependant, agent, attempt in event.placed:
            self._running_written(dependant, agent, attempt, event.future)

    def _record_result(self, task: Task, future) -> None:
        error = future.exception()
        if error is not None:
            if not isinstance(error, NotLeader) and not self._stopped.is_set():
                log.warning("task %s/%s: recording the result failed (%s); retrying", *task.key, error)
                self._after(RETRY_WRITE_AFTER, lambda: self._write_result(task))
            return  # NotLeader: no ack, the agent keeps the result for the next leader
        record, waiters = task.recording
        self.metrics.task_finished(record["result"]["duration"])
        build = self.builds[task.build_id]
        for stream, first in waiters:
            self.outbox.send(stream, self.outbox.message(ack=pb.ResultAck(task=task_ref(task), recorded=first)))
        self._write_records(build.finished_task(task, record, time.time(), self.clock()))
        self.report.dirty.add(build.id)
        self._dirty = True

    # -- records of tasks that never run -------------------------------------------------------
    def _write_records(self, writes: list[tuple[Task, dict]]) -> None:
        """Never-run records; retried until durable (or we stop leading)."""
        post = self.post_event
        for i in range(0, len(writes), 100):
            chunk = writes[i:i + 100]
            future = self.store.submit([self._task_put(t, rec) for t, rec in chunk], once=True)
            future.add_done_callback(lambda f, c=chunk: post(inbox.NeverRunWritten(f, c)))
        for t, _ in writes:
            self.report.dirty.add(t.build_id)

    def _on_never_run_written(self, event: inbox.NeverRunWritten) -> None:
        error = event.future.exception()
        if error is not None and not isinstance(error, NotLeader) and not self._stopped.is_set():
            log.warning("writing %d never-run task records failed (%s); retrying", len(event.writes), error)
            self._after(RETRY_WRITE_AFTER, lambda: self._write_records(event.writes))


def ref_exit(result: pb.TaskResult) -> int | None:
    """The exit code, or None when the task could not run at all."""
    return None if result.error and result.exit_code == 0 else result.exit_code
