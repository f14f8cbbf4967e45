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

What goes out (docs/internals.md): the changes of a loop turn are sent at
its end, one message per grant that changed (its slots then, or Unlend) and
one CoreGrants per build whose grants changed, whatever steps the turn took
(`_send_lending`). A build's cores of one turn come from one agent while it
has free ones, preferring the agent it already holds a grant on (the
scheduler's `together`): a want of 4 cores costs one Lend and, when given
back, one Unlend, not 4 + 4 (bench/grants.py's latency was the leader's
event loop writing those).
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
GRANT_IDS_AT_ONCE = 256


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
    _wants_by_stream: dict          # the same Wants by their stream
    _lends_out: dict[str, tuple]    # grant id -> (agent stream, slots: 0 ends it), sent at the turn's end
    _grants_out: dict[str, Want]    # builds whose CoreGrants go out at the turn's end
    _grant_ids: list[str]           # random grant ids not yet given (_grant_id)

    # -- events -----------------------------------------------------------------------
    def _on_cores_wanted(self, event: inbox.CoresWanted) -> None:
        want = self._wants_by_stream.get(event.stream)
        if want is None:
            want = Want(event.build, event.stream)
            self.wants[want.key] = want
            self._wants_by_stream[event.stream] = want
            self._grants_out[want.key] = want   # none yet: the initiator knows it is heard
            log.info("build %s wants helper cores", event.build)
        want.cores = max(0, event.cores)
        # Give back idle slots first (the initiator says which slots its jobs use):
        # a job already sent on a grant must not find it cut. Then the agent
        # holding the most slots, in one step.
        busy = dict(event.busy)
        while want.held > want.cores:
            agent = max(want.lent, key=lambda name: (want.lent[name][1] - busy.get(want.lent[name][0], 0),
                                                     want.lent[name][1]))
            grant_id, slots = want.lent[agent]
            idle = slots - min(slots, max(0, busy.get(grant_id, 0)))
            cut = min(idle or slots, want.held - want.cores)
            self._reduce(want, agent, slots - cut)
        self._dirty = True

    def _on_compiling_changed(self, event: inbox.CompilingChanged) -> None:
        agent = self.agents.get(event.stream.agent)
        if agent is not None and agent.stream is event.stream:
            agent.compiling = max(0, event.jobs)
            self._dirty = True

    def _on_cores_gone(self, event: inbox.CoresGone) -> None:
        want = self._wants_by_stream.pop(event.stream, None)
        if want is None:
            return
        for agent in list(want.lent):
            self._reduce(want, agent, 0)
        del self.wants[want.key]
        self._grants_out.pop(want.key, None)
        self._run_stream_gone(want)
        self._dirty = True

    # -- for the scheduler (results._schedule) ------------------------------------------
    def _end_unusable_lends(self) -> None:
        """Lends on agents that can no longer take them end (see the module docstring)."""
        auto = self.settings.auto_subscribe
        for want in self.wants.values():
            if want.lent:
                for name in [name for name in want.lent if not self._can_help(name, auto)]:
                    self._reduce(want, name, 0)

    def _end_lends_of(self, agent_name: str) -> None:
        """The agent opened a stream: lends of its earlier one end (it dropped them too)."""
        for want in self.wants.values():
            if agent_name in want.lent:
                self._reduce(want, agent_name, 0)

    def _can_help(self, name: str, auto_subscribe: bool) -> bool:
        agent = self.agents.get(name)
        return agent is not None and agent.eligible(auto_subscribe) and bool(agent.info.get("helper"))

    def _lend_demands(self, total: int, free: dict[str, int]) -> tuple[list[BuildDemand], dict]:
        """The run builds' demands, and where their cores should come from (the scheduler's
        `prefer`): the agent a build already holds the most slots on, if it has a free core
        (its grant grows: one Lend), else the helper with the most free cores."""
        demands, prefer, best = [], {}, None
        for w in sorted(self.wants.values(), key=lambda w: w.order):
            if w.cores <= w.held:
                continue
            demands.append(BuildDemand(w.key, [""] * min(total, w.cores - w.held), w.held, together=True))
            agent = max(w.lent, key=lambda name: w.lent[name][1]) if w.lent else None
            if not free.get(agent):
                if best is None:
                    best = self._most_free_helper(free) or ""
                agent = best
            if agent:
                prefer[(w.key, "")] = agent
        return demands, prefer

    def _most_free_helper(self, free: dict[str, int]) -> str | None:
        helpers = [(n, name) for name, n in free.items() if self.agents[name].info.get("helper")]
        return min(helpers, key=lambda h: (-h[0], h[1]))[1] if helpers else None

    def _lend(self, placements: list[Placement]) -> None:
        """The scheduler's placements of run builds: one more slot each."""
        auto = self.settings.auto_subscribe
        more: dict[tuple[str, str], int] = {}
        for p in placements:
            more[p.build_id, p.agent] = more.get((p.build_id, p.agent), 0) + 1
        for (key, agent), n in more.items():
            want = self.wants.get(key)
            if want is None or not self._can_help(agent, auto):
                continue   # an agent without a Helper service: the core stays free this turn
            grant = want.lent.get(agent)
            self._reduce(want, agent, (grant[1] if grant else 0) + n)

    # -- lends --------------------------------------------------------------------------
    def _reduce(self, want: Want, agent_name: str, slots: int) -> None:
        """Set the build's slots on the agent (0 ends the lend); the agent and the
        initiator hear of it at the end of the turn (_send_lending)."""
        agent = self.agents.get(agent_name)
        grant = want.lent.get(agent_name)
        before = grant[1] if grant else 0
        if slots <= 0:
            want.lent.pop(agent_name, None)
        elif grant is None:
            grant = want.lent[agent_name] = [self._grant_id(), slots]
        else:
            grant[1] = slots
        if grant is not None and slots != before:
            self._grants_out[want.key] = want
        if agent is None:
            return
        agent.lent += (slots if slots > 0 else 0) - before
        if agent.stream is not None and grant is not None:
            self._lends_out[grant[0]] = (agent.stream, max(0, slots))
        self._dirty = True

    def _grant_id(self) -> str:
        """A new random grant id of 128 bits (what secrets.token_hex(16) gives), drawn
        GRANT_IDS_AT_ONCE at a time (a urandom call per grant showed in the dispatcher's profile)."""
        if not self._grant_ids:
            pool = secrets.token_hex(16 * GRANT_IDS_AT_ONCE)
            self._grant_ids = [pool[i:i + 32] for i in range(0, len(pool), 32)]
        return self._grant_ids.pop()

    def _send_lending(self) -> None:
        """The end of a loop turn: each grant that changed, as it is now, to its agent (one
        message however many steps it took), then each changed build's CoreGrants."""
        if self._lends_out:
            lends, self._lends_out = self._lends_out, {}
            message, send = self.outbox.message, self.outbox.send
            for grant, (stream, slots) in lends.items():
                send(stream, message(lend=pb.Lend(grant=grant, slots=slots)) if slots
                     else message(unlend=pb.Unlend(grant=grant)))
        if self._grants_out:
            wants, self._grants_out = self._grants_out, {}
            for want in wants.values():
                self.outbox.send(want.stream, self._grants_message(want))

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
        self._wants_by_stream.clear()
        self._grants_out.clear()
        self._lends_out.clear()
        self._grant_ids.clear()
