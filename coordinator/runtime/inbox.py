"""What is posted to the dispatcher's queue: one small frozen value per kind
of event, each handled by one method of the Dispatcher (its `_handlers`).

Producers: the agent protocol's servers (HelloReceived, ResultReceived,
StreamGone), the Cores service (CoresWanted, CoresGone, RunReported), the runtime (SuccessorNamed, Stop), the watchers (the four
...Changed), and the completions of the group commit's writes (the
...Written events: they run on its writer threads, so they only post).
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from typing import Any, Callable

from cluster.protocol import agent_pb2 as pb

_event = dataclasses.dataclass(frozen=True, slots=True)


class Event:
    __slots__ = ()


# -- from the agents' streams ------------------------------------------------------
@_event
class HelloReceived(Event):
    stream: Any              # agent_protocol.AgentStream
    hello: pb.Hello


@_event
class ResultReceived(Event):
    stream: Any
    result: pb.TaskResult


@_event
class CompilingChanged(Event):
    """How many compile jobs of grants no coordinator holds still run on the agent (agent.proto Compiling)."""
    stream: Any
    jobs: int


@_event
class StreamGone(Event):
    """The stream ended (the agent went away, or we ended it)."""
    stream: Any


# -- from the initiators' Cores streams (lending.py) ---------------------------------------
@_event
class CoresWanted(Event):
    stream: Any              # an aio_service.AioAgentStream carrying CoreGrants
    build: str
    cores: int
    busy: tuple = ()         # (grant id, slots in use): idle slots are given back first


@_event
class CoresGone(Event):
    stream: Any


@_event
class RunReported(Event):
    """A request that carries a run build's start, finished jobs or end (run_records.py)."""
    stream: Any
    request: Any             # compile_pb2.CoreRequest


# -- from the runtime ----------------------------------------------------------------
@_event
class SuccessorNamed(Event):
    successor: tuple[str, str] | None   # (name, gRPC address) of the next leader


@_event
class Stop(Event):
    """See Dispatcher.stop."""
    reason: str
    timeout: float
    successor: tuple[str, str] | None
    before_goodbye: Callable[[], None] | None


# -- from the watchers (each carries the watch's events, in order) -------------------------
@_event
class BuildsChanged(Event):
    events: list


@_event
class CancelsChanged(Event):
    events: list


@_event
class AgentsChanged(Event):
    events: list


@_event
class AgentConfigChanged(Event):
    events: list


@_event
class SettingsChanged(Event):
    events: list


# -- a write of the group commit resolved ----------------------------------------------
@_event
class RunningWritten(Event):
    """A task's running record (placed on agent with attempt)."""
    task: Any                # state.Task
    agent: str
    attempt: int
    future: Future


@_event
class ResultWritten(Event):
    """A task's result, with the running records of the dependants placed
    in the same transaction: (dependant, agent, attempt) each."""
    task: Any
    future: Future
    placed: list


@_event
class NeverRunWritten(Event):
    """Records of tasks that never run: (task, record) each."""
    future: Future
    writes: list


@_event
class FinalStatusWritten(Event):
    build_id: str
    future: Future


@_event
class RuntimeKeyWritten(Event):
    future: Future


@_event
class RunWritten(Event):
    """A run build's start, jobs (cluster.records.JobRecord each) or final status."""
    build_id: str
    what: str                # "start", "jobs" or "end"
    future: Future
    records: list
