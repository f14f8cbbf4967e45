"""What the parts of one epoch's dispatcher share (dispatcher.py sets it all
up in Dispatcher.__init__; agents.py and results.py use it). Declared here
once, so that each part can be read on its own. Touched only on the
dispatcher's loop thread, except where said.
"""
from __future__ import annotations

import heapq
import itertools
import threading
from typing import Any, Callable

from cluster.keys import Keys
from cluster.settings import Settings
from coordinator.runtime import inbox
from coordinator.runtime.outbox import Outbox
from coordinator.runtime.reporting import Reporter
from coordinator.runtime.state import Agent, Build, Task
from coordinator.runtime.store import GroupCommit


class EpochState:
    etcd: Any
    keys: Keys
    name: str                          # this coordinator's
    epoch: int
    grace: float                       # s the agents of a takeover have to say hello
    clock: Callable[[], float]
    dispatching: bool                  # cleared from any thread when leading ends
    store: GroupCommit                 # fenced writes, batched
    settings: Settings
    builds: dict[str, Build]           # unfinished, or finished but the final status not yet durable
    finished_builds: set[str]          # ended, final status durable: never loaded again
    _cancels_waiting: set[str]         # build-cancel/<id> seen before builds/<id> (cancelling.py)
    agents: dict[str, Agent]
    outbox: Outbox
    report: Reporter
    stats: dict
    post_event: Callable[[inbox.Event], None]   # from any thread (a write's completion)
    _dirty: bool                       # something changed: run the scheduler
    _results_to_write: list[Task]      # results taken this loop turn, written at its end
    # (name, gRPC address) of the coordinator expected to lead next, announced to every agent
    # so that each holds a Standby stream to it (agent/link.py) and moving there costs one Hello.
    _successor: tuple[str, str] | None
    _announcing: bool                  # the successor may be named (see agents.ANNOUNCE_AFTER_MOVE)
    _announce_due: bool                # every present agent has moved here
    _awaiting_hello: set[str]          # recorded running tasks, not heard from since the takeover
    _grace_deadline: float
    _later: list                       # heap of (when, seq, fn), see _after
    _seq: itertools.count
    _stopped: threading.Event          # the shutdown is over: no retries

    def _task(self, key: tuple[str, str]) -> Task | None:
        build = self.builds.get(key[0])
        return None if build is None else build.tasks.get(key[1])

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn on the loop's thread after delay seconds."""
        heapq.heappush(self._later, (self.clock() + delay, next(self._seq), fn))
