"""The dispatcher's cancellations: acting on build-cancel/<id>.

Mixed into `dispatcher.Dispatcher` and run on its loop thread only. The web
API writes build-cancel/<id> (fenced, where agents are served); the
dispatcher hears of it through its watch, or finds it in its starting point
after a takeover, and then:

- the build's tasks that have not started end at once, recorded failed with
  the error "cancelled" (state.Build.cancel), so they never start;
- its running tasks end the same way, and their agents get a Cancel (they
  kill the task's process group and report nothing: agent/runner.py). A
  result that arrives anyway finds the task ended and is acknowledged with
  recorded=false, so every task still ends exactly once;
- a task whose running record is being written ends when that write
  resolves (results.py, end_assigning), never sent; a task whose result is
  being written ends with that result;
- the build ends `cancelled` once every task has ended (reporting.py).

A cancellation may arrive before the build itself (two watches, no order
between them): it is kept until the build is added.
"""
from __future__ import annotations

import logging
import time

from cluster.keys import Keys
from cluster.protocol import agent_pb2 as pb
from coordinator.runtime import inbox
from coordinator.runtime.agents import task_ref
from coordinator.runtime.epoch_state import EpochState
from coordinator.runtime.state import Build

log = logging.getLogger("coordinator.runtime.dispatcher")   # these are the dispatcher's own log lines


class BuildCancelling(EpochState):
    """The cancellations' side of the Dispatcher (see the module docstring)."""

    def _on_cancels_changed(self, event: inbox.CancelsChanged) -> None:
        for e in event.events:
            if e.type != "put":
                continue
            build_id = Keys.name_of(e.key, self.keys.build_cancels)
            build = self.builds.get(build_id)
            if build is not None:
                self._cancel(build)
            elif build_id not in self.finished_builds:
                self._cancels_waiting.add(build_id)   # its build is not here yet

    def _cancel_if_asked(self, build: Build) -> None:
        """A build just added (loaded, or heard of): cancel it if that was asked for."""
        if build.id in self._cancels_waiting:
            self._cancels_waiting.discard(build.id)
            self._cancel(build)

    def _cancel(self, build: Build) -> None:
        if build.cancelled or build.over:
            return
        writes, stop = build.cancel(time.time())
        for task in stop:
            agent = self.agents.get(task.agent)
            if agent is None:
                continue
            agent.running.discard(task.key)
            if agent.stream is not None:
                self.outbox.send(agent.stream, self.outbox.message(cancel=pb.Cancel(task=task_ref(task))))
        log.info("build %s cancelled: %d task(s) ended, %d of them stopped on their agents",
                 build.id, len(writes), len(stop))
        self._write_records(writes)
        self.report.dirty.add(build.id)
        self._dirty = True
