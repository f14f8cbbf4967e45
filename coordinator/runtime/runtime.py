"""The leader's work, switched on and off by the HA loop.

`Runtime` is built once per coordinator. Its `servicer` is registered on the
daemon's gRPC server for the process's whole life and refuses agents while
the runtime is not started. `start(epoch)` begins one epoch of leadership (a
`Dispatcher`: load unfinished builds, watch, schedule, record); `stop(reason)`
ends it cleanly (flush, Goodbye to every agent). A fenced write that fails
with NotLeader stops dispatching at once and calls `on_not_leader`; the
daemon is expected to call `stop()` then.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from coordinator.config import Timings
from coordinator.keys import Keys, decode
from coordinator.protocol import agent_pb2_grpc
from coordinator.runtime.dispatcher import Dispatcher
from coordinator.runtime.service import AgentService
from lease.errors import EtcdError

log = logging.getLogger(__name__)


class Runtime:
    """Start/stop are serialized; stats() and the servicer are thread-safe."""

    def __init__(self, etcd, keys: Keys, name: str, timings: Timings, agent_token: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_not_leader: Callable[[], None] | None = None):
        self.etcd = etcd
        self.keys = keys
        self.name = name
        self.timings = timings
        self.agent_token = agent_token or None
        self.clock = clock
        self.on_not_leader = on_not_leader
        self.servicer = AgentService(self)
        self._lock = threading.RLock()
        self._dispatcher: Dispatcher | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self, epoch: int) -> None:
        """Lead with this epoch. Raises EtcdUnavailable if the snapshot cannot
        be read (the runtime then stays stopped). Starting again with the same
        epoch is a no-op; with another epoch the old one is stopped first."""
        with self._lock:
            if self._dispatcher is not None:
                if self._dispatcher.epoch == epoch:
                    return
                self.stop("a new epoch began")
            dispatcher = Dispatcher(self.etcd, self.keys, self.name, epoch, self.timings.grace,
                                    self.clock, self._lost_leadership)
            # Visible before it has loaded: agents that follow the new leader key at once
            # are accepted, and their hellos wait in the dispatcher's queue until it runs,
            # instead of being refused "not leader" while it reads its starting point.
            self._dispatcher = dispatcher
            try:
                dispatcher.start()
            except BaseException:
                self._dispatcher = None
                dispatcher.stop("could not load the cluster state", timeout=0.5)
                raise
            log.info("runtime: leading with epoch %s", epoch)

    def stop(self, reason: str = "coordinator stopping") -> None:
        """Stop dispatching, flush writes, send Goodbye(reason) to every agent
        and close the streams. Safe to call twice and when not started."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
            if dispatcher is not None:
                dispatcher.stop(reason, timeout=self.timings.renew_deadline)
                log.info("runtime: stopped (%s)", reason)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is resolved. True if it was."""
        dispatcher = self._dispatcher
        return True if dispatcher is None else dispatcher.store.flush(timeout)

    @property
    def epoch(self) -> int | None:
        dispatcher = self._dispatcher
        return None if dispatcher is None or not dispatcher.dispatching else dispatcher.epoch

    @property
    def started(self) -> bool:
        return self._dispatcher is not None

    def stats(self) -> dict:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return {"agents_connected": 0, "tasks_dispatched": 0, "queued": 0, "running": 0}
        return dict(dispatcher.stats)

    def add_to_server(self, server: grpc.Server) -> None:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.servicer, server)

    # -- for the servicer ----------------------------------------------------------------
    def post(self, event: tuple, epoch: int) -> bool:
        """Hand an agent's event to the dispatcher of that epoch; False if it is gone."""
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher.epoch != epoch:
            return False
        dispatcher.post(event)
        return True

    def not_leader_message(self) -> str:
        try:
            leader = decode(self.etcd.get(self.keys.leader)[0]) or {}
        except (EtcdError, ValueError):
            leader = {}
        name = leader.get("name")
        return f"not leader; leader is {name}" if name and name != self.name else "not leader"

    def _lost_leadership(self) -> None:
        if self.on_not_leader is not None:
            self.on_not_leader()
