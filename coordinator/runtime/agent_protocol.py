"""The rules of the agent protocol (cluster/protocol/agent.proto) that every
server of it applies, whatever its transport.

The daemon serves it with `aio_service.AioAgentServer`; a threaded server
for tests and benchmarks (bench/sync_service.py) applies the same rules from
here. Nothing here decides anything about tasks: a server checks the token
and the epoch (rule 4) and posts what the agent says to the runtime as
`inbox` events.

Refusals: a wrong or missing token -> UNAUTHENTICATED; not leading ->
FAILED_PRECONDITION "not leader..."; a message carrying another epoch ->
FAILED_PRECONDITION "stale epoch E; the leader's epoch is X".
"""
from __future__ import annotations

import hmac
from typing import Callable, Protocol

import grpc

from cluster.protocol import agent_pb2 as pb
from coordinator.runtime.inbox import Event, ResultReceived

STARTING_UP_WAIT = 1.0  # s a Hello may wait for a coordinator that just won to start leading


class AgentStream(Protocol):
    """One connected agent's stream, as the dispatcher sees it. All methods
    are safe from any thread and after the end (they then do nothing)."""

    agent: str
    epoch: int

    def send(self, message: pb.CoordinatorMessage) -> None: ...

    def send_all(self, messages: list[pb.CoordinatorMessage]) -> None:
        """Several messages, in one write where the transport allows."""

    def end(self, goodbye: str | None = None) -> None:
        """Say Goodbye(goodbye) if given, then close."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        """End the stream with a gRPC error."""


class Leading(Protocol):
    """What a server of the protocol needs from the runtime."""

    name: str
    agent_token: str | None

    @property
    def epoch(self) -> int | None: ...

    def not_leader_message(self) -> str: ...

    def wait_leading(self, timeout: float) -> int | None: ...

    def post(self, event: Event, epoch: int) -> bool: ...


def stale_epoch(sent: int, ours: int) -> str:
    return f"stale epoch {sent}; the leader's epoch is {ours}"


def token_ok(context: grpc.ServicerContext, token: str) -> bool:
    """The call's metadata carries "authorization: Bearer <token>"."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return hmac.compare_digest(value.encode(), f"Bearer {token}".encode())
    return False


def handle_agent_message(message: pb.AgentMessage, stream: AgentStream,
                         post: Callable[[Event, int], bool]) -> bool:
    """One message after the Hello, for every server of the protocol.
    Returns False when the stream must end (it was aborted: stale epoch, a second Hello)."""
    if message.epoch != stream.epoch:
        stream.abort(grpc.StatusCode.FAILED_PRECONDITION, stale_epoch(message.epoch, stream.epoch))
        return False
    body = message.WhichOneof("body")
    if body == "result":
        post(ResultReceived(stream, message.result), stream.epoch)
    elif body == "hello":
        stream.abort(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may be a Hello")
        return False
    # Heartbeats only keep the stream busy; presence is the agent's lease.
    return True
