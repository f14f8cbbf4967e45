"""The leader lends helper cores to `baton run` builds (docs/design.md section 8).

An initiator holds one Cores.Want stream (compile.proto) to the leader and
says how many cores its build could use now; the leader answers with the
build's grants (agent, helper address, slots, grant id, epoch) whenever they
change, and tells each agent over its own stream (agent.proto Lend/Unlend).

Mixed into `dispatcher.Dispatcher` and run on its loop thread only. The
rules:

- One core budget per agent: a lent core runs no task and a core running a
  task is not lent (`state.Agent.lent` counts in `Agent.free`). Run builds
  take part in the scheduler's fair share as builds whose "ready tasks" are
  the cores they still want (results._schedule), under the same "max cores
  per build", on enabled, subscribed, connected agents that serve compile
  jobs (their presence names a helper address).
- Lends are not preempted, like running tasks; a build that wants fewer
  cores gives them back at once (its jobs in flight on them finish).
- A lend ends with the initiator's stream, with the agent's stream or
  presence, or when the agent is disabled or unsubscribed.
- Nothing of this is written to etcd (the write rate would cap the farm).
  A new leader starts with no lends: the initiators' streams end with the
  old leader's epoch and they ask the new one; helpers refuse new jobs under
  the old epoch's grants (agent/helper.py) while the jobs in flight finish.
- The leader rebuilds what it needs from the agents' hellos: an agent drops
  its grants when it opens a stream (so does the leader: a lend ends with the
  agent's stream), and its Hello counts the compile jobs still running under
  them (`Hello.compiling`, then a `Compiling` message each time fewer run).
  Those cores are busy (`state.Agent.compiling` counts in `Agent.free`): not
  lent, no task, until the jobs end. So an agent never runs more than its
  cores, through a failover too.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
from typing import Any

from cluster.protocol import agent_pb2 as pb
from cluster.protocol import compile_pb2 as cpb
from coordinator.runtime import inbox
from coordinator.runtime.epoch_state import EpochState
from coordinator.runtime.scheduler import BuildDemand, Placement

log = logging.getLogger("coordinator.runtime.dispatcher")

RUN_PREFIX = "run/"   # a run build's id in the scheduler's demands (task builds' ids have no "/")
_order = itertools.count()


@dataclasses.dataclass(eq=False)
class Want:
    """One initiator's stream: its build, the cores it wants, what it holds."""

    build: str
    stream: Any                     # an aio_service.AioAgentStream carrying CoreGrants
    cores: int = 0
    order: int = dataclasses.field(default_factory=lambda: next(_order))
    lent: dict = dataclasses.field(default_factory=dict)   # agent name -> [grant id, slots]

    @property
    def key(self) -> str:
        return f"{RUN_PREFIX}{self.order}"

    @property
    def held(self) -> int:
        return sum(slots for _, slots in self.lent.values())


class CoreLending(EpochState):
    """The lending side of the Dispatcher (see the module docstring)."""

    wants: dict[str, Want]          # by Want.key

    # -- events -----------------------------------------------------------------------
    def _on_cores_wanted(self, event: inbox.CoresWanted) -> None:
        want = next((w for w in self.wants.values() if w.stream is event.stream), None)
        if want is None:
            want = Want(event.build, event.stream)
            self.wants[want.key] = want
            self._send_grants(want)   # none yet: the initiator knows it is heard
            log.info("build %s wants helper cores", event.build)
        want.cores = max(0, event.cores)
        changed = False
        while want.held > want.cores:   # give back from the agent holding the most slots
            agent = max(want.lent, key=lambda name: want.lent[name][1])
            self._reduce(want, agent, want.lent[agent][1] - 1)
            changed = True
        if changed:
            self._send_grants(want)
        self._dirty = True

    def _on_compiling_changed(self, event: inbox.CompilingChanged) -> None:
        agent = self.agents.get(event.stream.agent)
        if agent is not None and agent.stream is event.stream:
            agent.compiling = max(0, event.jobs)
            self._dirty = True

    def _on_cores_gone(self, event: inbox.CoresGone) -> None:
        want = next((w for w in self.wants.values() if w.stream is event.stream), None)
        if want is None:
            return
        for agent in list(want.lent):
            self._reduce(want, agent, 0)
        del self.wants[want.key]
        self._run_stream_gone(want)
        self._dirty = True

    # -- for the scheduler (results._schedule) ------------------------------------------
    def _end_unusable_lends(self) -> None:
        """Lends on agents that can no longer take them end (see the module docstring)."""
        auto = self.settings.auto_subscribe
        for want in self.wants.values():
            gone = [name for name in want.lent if not self._can_help(name, auto)]
            for name in gone:
                self._reduce(want, name, 0)
            if gone:
                self._send_grants(want)

    def _end_lends_of(self, agent_name: str) -> None:
        """The agent opened a stream: lends of its earlier one end (it dropped them too)."""
        for want in self.wants.values():
            if agent_name in want.lent:
                self._reduce(want, agent_name, 0)
                self._send_grants(want)

    def _can_help(self, name: str, auto_subscribe: bool) -> bool:
        agent = self.agents.get(name)
        return agent is not None and agent.eligible(auto_subscribe) and bool(agent.info.get("helper"))

    def _lend_demands(self, total: int) -> list[BuildDemand]:
        return [BuildDemand(w.key, [""] * min(total, w.cores - w.held), w.held)
                for w in sorted(self.wants.values(), key=lambda w: w.order) if w.cores > w.held]

    def _lend(self, placements: list[Placement]) -> None:
        """The scheduler's placements of run builds: one more slot each."""
        auto = self.settings.auto_subscribe
        touched = {}
        for p in placements:
            want = self.wants.get(p.build_id)
            if want is None or not self._can_help(p.agent, auto):
                continue   # an agent without a Helper service: the core stays free this turn
            grant = want.lent.get(p.agent)
            self._reduce(want, p.agent, (grant[1] if grant else 0) + 1)
            touched[want.key] = want
        for want in touched.values():
            self._send_grants(want)

    # -- lends --------------------------------------------------------------------------
    def _reduce(self, want: Want, agent_name: str, slots: int) -> None:
        """Set the build's slots on the agent (0 ends the lend) and tell the agent."""
        agent = self.agents.get(agent_name)
        grant = want.lent.get(agent_name)
        before = grant[1] if grant else 0
        if slots <= 0:
            want.lent.pop(agent_name, None)
        elif grant is None:
            grant = want.lent[agent_name] = [secrets.token_hex(16), slots]
        else:
            grant[1] = slots
        if agent is None:
            return
        agent.lent += (slots if slots > 0 else 0) - before
        if agent.stream is not None and grant is not None:
            self.outbox.send(agent.stream, self.outbox.message(lend=pb.Lend(grant=grant[0], slots=slots))
                             if slots > 0 else self.outbox.message(unlend=pb.Unlend(grant=grant[0])))
        self._dirty = True

    def _send_grants(self, want: Want) -> None:
        want.stream.send(self._grants_message(want))

    def _grants_message(self, want: Want) -> cpb.CoreGrants:
        """The build's grants as they are now (run_records.py adds its acks to it)."""
        grants = []
        for name, (grant, slots) in sorted(want.lent.items()):
            agent = self.agents[name]
            grants.append(cpb.Grant(agent=name, helper=agent.info.get("helper") or "", slots=slots, grant=grant,
                                    epoch=self.epoch))
        return cpb.CoreGrants(epoch=self.epoch, grants=grants)

    def _end_lending(self) -> None:
        """Leading ends: the initiators' streams end (they ask the next leader)."""
        for want in self.wants.values():
            want.stream.end()
        self.wants.clear()
