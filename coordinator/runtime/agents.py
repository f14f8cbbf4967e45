"""The dispatcher's agents: hellos, stream ends, presence and admin config,
the grace timer after a takeover, heartbeats and naming the successor.

Mixed into `dispatcher.Dispatcher` and run on its loop thread only, like
everything that touches the state. A lost agent's tasks (agents/<name>
deleted, no hello within `grace` after the start, or a hello that no longer
lists them) run again elsewhere with attempt + 1.
"""
from __future__ import annotations

import logging
import time

import grpc

from cluster.keys import Keys, decode
from cluster.names import is_name
from cluster.protocol import agent_pb2 as pb
from coordinator.runtime import inbox
from coordinator.runtime.epoch_state import EpochState
from coordinator.runtime.state import ASSIGNING, MAX_CORES, RUNNING, Agent, Task, presence_cores

log = logging.getLogger("coordinator.runtime.dispatcher")   # these are the dispatcher's own log lines

# The successor is named ANNOUNCE_AFTER_MOVE after every present agent has said hello
# here, or ANNOUNCE_SUCCESSOR_AFTER after taking over (dispatcher.py), not at once: each
# agent opens a Standby stream when it hears the name, and 200 agents doing so while
# others were still moving here (or writing their presence) slowed the move itself
# (bench/failover.py). A handover before that still works, over new streams.
ANNOUNCE_AFTER_MOVE = 0.2


class AgentRoster(EpochState):
    """The agents' side of the Dispatcher (see the module docstring). Also
    uses ResultRecording._result (a Hello may carry results)."""

    # -- events ---------------------------------------------------------------------------
    def _on_hello(self, event: inbox.HelloReceived) -> None:
        stream, hello = event.stream, event.hello
        if not self.dispatching:
            stream.abort(grpc.StatusCode.FAILED_PRECONDITION, "not leader")
            return
        agent = self._agent(hello.name)
        if agent.stream is not None and agent.stream is not stream:
            # The server admitted the new stream (agent_protocol.ConnectedAgents): the old one
            # is closed or was silent too long, so the agent is dialling again.
            self.outbox.end(agent.stream, "replaced: the agent connected again after this stream fell silent")
        agent.stream = stream
        agent.cores = min(MAX_CORES, max(0, hello.cores) or presence_cores(agent.info))
        # Lends end with the agent's stream; the compile jobs still running under them
        # (or under an earlier leader's) keep their cores until the agent says they ended.
        self._end_lends_of(agent.name)
        agent.compiling = max(0, hello.compiling)
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
                self.outbox.send(stream, self.outbox.message(cancel=pb.Cancel(
                    task=pb.TaskRef(build_id=ref.build_id, task_id=ref.task_id, attempt=ref.attempt))))
        for result in hello.results:
            task = self._task((result.task.build_id, result.task.task_id))
            if task is not None and task.attempt == result.task.attempt and task.agent == agent.name:
                keep.add(task.key)
        if self._successor is not None and self._announcing:
            self.outbox.send(stream, self._successor_msg())
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

    def _on_stream_gone(self, event: inbox.StreamGone) -> None:
        agent = self.agents.get(event.stream.agent)
        if agent is not None and agent.stream is event.stream:
            agent.stream = None
            self._dirty = True

    def _on_agents_changed(self, event: inbox.AgentsChanged) -> None:
        for e in event.events:
            name = Keys.name_of(e.key, self.keys.agents)
            if not is_name(name):
                log.warning("ignored a presence key whose agent name breaks the naming rules: %.80r", name)
                continue
            agent = self._agent(name)
            if e.type == "put":
                agent.present = True
                agent.info = decode(e.value) or {}
            else:
                agent.present = False
                self._lose_tasks(agent, "the agent's presence key was deleted")
        self._dirty = True

    def _on_agent_config_changed(self, event: inbox.AgentConfigChanged) -> None:
        for e in event.events:
            name = Keys.name_of(e.key, self.keys.agent_config)
            if is_name(name):
                self._apply_config(name, e.value)
        self._dirty = True

    def _on_successor_named(self, event: inbox.SuccessorNamed) -> None:
        if event.successor != self._successor:
            self._successor = event.successor
            if event.successor is not None and self._announcing:
                self._announce_successor()

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
                continue  # the write in flight will find the agent gone (see _on_running_written)
            log.info("task %s/%s attempt %s on %s: %s; it runs again", *key, task.attempt, agent.name, why)
            agent.running.discard(key)
            if agent.stream is not None and task.sent:
                self.outbox.send(agent.stream, self.outbox.message(cancel=pb.Cancel(task=task_ref(task))))
            self.builds[task.build_id].requeue(task, self.clock())
            self.report.dirty.add(task.build_id)
        self._dirty = True

    def _grace_expired(self) -> None:
        for name in self._awaiting_hello:
            self._lose_tasks(self._agent(name), f"no hello within {self.grace:g} s of the new leader")
        self._awaiting_hello.clear()

    def _heartbeat(self) -> None:
        beat = self.outbox.message(heartbeat=pb.Heartbeat(sent_unix_ns=time.time_ns()))
        connected = 0
        for agent in self.agents.values():
            if agent.stream is not None:
                connected += 1
                self.outbox.send(agent.stream, beat)
        self.stats["agents_connected"] = connected

    # -- the successor --------------------------------------------------------------------
    def _start_announcing(self) -> None:
        if self._announcing:
            return
        self._announcing = True
        if self._successor is not None:
            self._announce_successor()

    def _announce_successor(self) -> None:
        self.outbox.send_each([a.stream for a in self.agents.values() if a.stream is not None],
                              self._successor_msg())

    def _successor_msg(self) -> pb.CoordinatorMessage:
        name, address = self._successor
        return self.outbox.message(successor=pb.Successor(name=name, grpc=address))


def task_ref(task: Task) -> pb.TaskRef:
    return pb.TaskRef(build_id=task.build_id, task_id=task.id, attempt=task.attempt)
