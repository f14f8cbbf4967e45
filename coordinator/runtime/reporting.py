"""What people watching the UI see: build-status/<id> and the runtime key.

Both are rewritten often and matter to no safety rule, so they are
coalesced (a newer write replaces a queued one) and rate-limited:
build-status at once when a build's state changes, else at most every
STATUS_EVERY seconds; the runtime key at most every tick (0.5 s) and only
when the agents' view changed. A build is forgotten by the dispatcher only
once its final status is durable; a failed final write is retried.
Runs on the dispatcher's thread, like everything that touches the state.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from cluster.keys import Keys, encode
from coordinator.runtime.inbox import Event, FinalStatusWritten, RuntimeKeyWritten
from coordinator.runtime.state import Agent, Build, presence_cores
from coordinator.runtime.store import GroupCommit
from lease.errors import NotLeader

log = logging.getLogger(__name__)

STATUS_EVERY = 0.1
RETRY_AFTER = 0.5
# The runtime key holds every agent: each one's share is bounded (names by the naming
# rules, cores by state.MAX_CORES, the builds listed here), so that the key stays far
# below etcd's request limit (1.5 MiB) however many tasks an agent runs.
BUILDS_SHOWN = 20


class Reporter:
    def __init__(self, etcd, store: GroupCommit, keys: Keys, name: str, epoch: int,
                 builds: dict[str, Build], finished_builds: set[str], clock: Callable[[], float],
                 post: Callable[[Event], None], after: Callable[[float, Callable[[], None]], None]):
        self.etcd, self.store, self.keys, self.name, self.epoch = etcd, store, keys, name, epoch
        self.builds, self.finished_builds = builds, finished_builds
        self.clock, self.post, self.after = clock, post, after
        self.dirty: set[str] = set()          # builds whose status changed since written
        self._last_agents: Any = None

    def write_statuses(self, force: bool = False) -> None:
        if not self.dirty:
            return
        now, tick = time.time(), self.clock()
        later = set()
        for build_id in self.dirty:
            build = self.builds.get(build_id)
            if build is None:
                continue
            status = build.status_record(now)
            if not force and status["state"] == build.written_state and tick - build.status_written < STATUS_EVERY:
                later.add(build_id)
                continue
            build.status_written, build.written_state = tick, status["state"]
            future = self.store.submit([self.etcd.ops.put(self.keys.status_of_build(build_id), encode(status))],
                                       coalesce=True)
            if build.over:
                future.add_done_callback(lambda f, b=build_id: self.post(FinalStatusWritten(b, f)))
        self.dirty = later

    def final_status_written(self, event: FinalStatusWritten) -> None:
        """The final status write of a build resolved."""
        build_id, error = event.build_id, event.future.exception()
        if error is None:
            if self.builds.pop(build_id, None) is not None:
                self.finished_builds.add(build_id)
        elif not isinstance(error, NotLeader) and build_id in self.builds:
            log.warning("build %s: writing its final status failed (%s); retrying", build_id, error)
            self.builds[build_id].written_state = None
            self.after(RETRY_AFTER, lambda: self.dirty.add(build_id))

    def write_runtime(self, agents: dict[str, Agent], auto_subscribe: bool) -> None:
        view = {}
        for a in agents.values():
            if a.present or a.stream is not None or a.running:
                view[a.name] = {"connected": a.stream is not None, "running": len(a.running),
                                "cores": a.cores or presence_cores(a.info),
                                "state": a.state(auto_subscribe),
                                "builds": sorted({k[0] for k in a.running})[:BUILDS_SHOWN]}
        if view == self._last_agents:
            return
        self._last_agents = view
        value = {"coordinator": self.name, "epoch": self.epoch, "time": time.time(), "agents": view}
        future = self.store.submit([self.etcd.ops.put(self.keys.runtime, encode(value))], coalesce=True)
        future.add_done_callback(lambda f: self.post(RuntimeKeyWritten(f)))

    def runtime_written(self, event: RuntimeKeyWritten) -> None:
        """A runtime key write resolved; after a failure write it again next tick."""
        if event.future.exception() is not None:
            self._last_agents = None

    def task_counts(self) -> tuple[int, int]:
        """(queued, running) over the builds in memory."""
        queued = running = 0
        for build in self.builds.values():
            c = build.counts()
            running += c["running"]
            queued += c["total"] - c["running"] - c["done"] - c["failed"]
        return queued, running
