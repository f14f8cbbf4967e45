"""The leader's work, switched on and off by the HA loop.

`Runtime` is built once per coordinator. The daemon's agent server
(aio_service.AioAgentServer) serves it for the process's whole life and
refuses agents while it is not started. `start(epoch)` begins one epoch of
leadership (a `Dispatcher`: load unfinished builds, watch, schedule, record); `stop(reason)`
ends it cleanly (flush, Goodbye to every agent). A fenced write that fails
with NotLeader stops dispatching at once and calls `on_not_leader`; the
daemon is expected to call `stop()` then.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cluster.keys import Keys
from cluster.records import LeaderRecord
from coordinator.config import Timings
from coordinator.runtime.dispatcher import Dispatcher
from coordinator.runtime.metrics import Metrics
from coordinator.runtime.mirror import Mirror
from coordinator.runtime.inbox import Event, SuccessorNamed
from lease.errors import EtcdError

log = logging.getLogger(__name__)

MIRROR_CATCH_UP = 0.5   # s a takeover waits for the warm mirror to reach its epoch before reading etcd
REFILL_AFTER_LEADING = 1.0   # s after leading ends before the warm mirror is read again (see keep_warm)


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
        self._lock = threading.RLock()
        self._started = threading.Condition()   # notified when an epoch begins
        self._dispatcher: Dispatcher | None = None
        self._mirror: Mirror | None = None
        self._stopped_at = float("-inf")   # when leading last ended
        self.store_write_errors = 0        # writes etcd refused or did not answer, every epoch
        self.metrics = Metrics()   # for the whole process, across epochs (/metrics)

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
                                    self.clock, self._lost_leadership, metrics=self.metrics,
                                    run_abandon=self.timings.run_abandon)
            dispatcher.store.on_error = self._write_failed
            # Visible before it has loaded: agents that follow the new leader key at once
            # are accepted, and their hellos wait in the dispatcher's queue until it runs,
            # instead of being refused "not leader" while it reads its starting point.
            self._dispatcher = dispatcher
            with self._started:
                self._started.notify_all()
            mirror, self._mirror = self._mirror, None
            warm = None
            if mirror is not None:
                # Every earlier leader's writes precede our epoch's revision (our campaign's
                # put): the mirror needs every event before it, not the put itself, which
                # would cost one more watch delivery while the agents wait.
                warm = mirror.snapshot(at_least=epoch - 1, timeout=MIRROR_CATCH_UP)
                # A leader does not need it (its own writes are the state); stopped now,
                # not after the load, so that it decodes no more events meanwhile.
                mirror.stop_applying()
                threading.Thread(target=mirror.stop, name="stop mirror", daemon=True).start()
            try:
                dispatcher.start(warm)
            except BaseException:
                self._dispatcher = None
                dispatcher.stop("could not load the cluster state", timeout=0.5)
                raise
            log.info("runtime: leading with epoch %s", epoch)

    def announce_successor(self, successor: tuple[str, str] | None) -> None:
        """(name, gRPC address) of the coordinator expected to lead after this
        one (the selected backup, the primary, a switchover's target): the
        agents keep a Standby stream to it. No-op when not leading."""
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.post(SuccessorNamed(successor))

    def keep_warm(self, wanted: bool) -> None:
        """While not leading, keep (wanted) or drop a Mirror of the starting
        point, so that taking over does not have to read it. Cheap to call
        every HA cycle; restarts a mirror whose first read failed."""
        with self._lock:
            mirror = self._mirror
            if wanted and self._dispatcher is None:
                if mirror is None or not mirror.alive:
                    # Just after leading, not at once: a planned handover's agents are
                    # moving now, and reading and decoding the whole starting point
                    # would take the machine (and etcd) from them.
                    after = max(0.0, self._stopped_at + REFILL_AFTER_LEADING - self.clock())
                    self._mirror = Mirror(self.etcd, self.keys).start(after=after)
                return
            self._mirror = None
        if mirror is not None:
            mirror.stop()

    def stop(self, reason: str = "coordinator stopping", successor: tuple[str, str] | None = None,
             before_goodbye: Callable[[], None] | None = None) -> None:
        """Stop dispatching, flush writes, run before_goodbye (also when not
        started), send Goodbye(reason) to every agent and close the streams.
        successor (name, gRPC address): the next leader of a planned
        handover, announced to the agents first. Safe to call twice."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
            if dispatcher is None:
                if before_goodbye is not None:
                    before_goodbye()
                return
            began = self.clock()
            dispatcher.stop(reason, timeout=self.timings.renew_deadline, successor=successor,
                            before_goodbye=before_goodbye)
            self._stopped_at = self.clock()
            log.info("runtime: stopped (%s) in %.0f ms", reason, (self.clock() - began) * 1000)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is resolved. True if it was."""
        dispatcher = self._dispatcher
        return True if dispatcher is None else dispatcher.store.flush(timeout)

    def wait_leading(self, timeout: float) -> int | None:
        """The epoch, once this runtime leads (waiting up to timeout), else None."""
        with self._started:
            self._started.wait_for(lambda: self.epoch is not None, timeout)
        return self.epoch

    @property
    def epoch(self) -> int | None:
        dispatcher = self._dispatcher
        return None if dispatcher is None or not dispatcher.dispatching else dispatcher.epoch

    @property
    def started(self) -> bool:
        return self._dispatcher is not None

    def stats(self) -> dict:
        dispatcher = self._dispatcher
        counts = self.metrics.to_state()
        if dispatcher is None:
            stats = {"agents_connected": 0, "tasks_dispatched": 0, "queued": 0, "running": 0}
        else:
            stats = dict(dispatcher.stats)
        stats["store_write_errors"] = self.store_write_errors
        return {**stats, **counts}

    def _write_failed(self, error: Exception) -> None:
        # Called on a group-commit thread (which logged it); a counter only grows.
        self.store_write_errors += 1

    # -- for the agent server (agent_protocol.Leading) ------------------------------------
    def post(self, event: Event, epoch: int) -> bool:
        """Hand an agent's event to the dispatcher of that epoch; False if it is gone."""
        dispatcher = self._dispatcher
        if dispatcher is None or dispatcher.epoch != epoch:
            return False
        dispatcher.post(event)
        return True

    def not_leader_message(self) -> str:
        try:
            value, meta = self.etcd.get(self.keys.leader)
        except EtcdError:
            value, meta = None, None
        leader = LeaderRecord.parse(value, meta.create_revision if meta else 0)
        name = leader.name if leader else None
        return f"not leader; leader is {name}" if name and name != self.name else "not leader"

    def _lost_leadership(self) -> None:
        if self.on_not_leader is not None:
            self.on_not_leader()
