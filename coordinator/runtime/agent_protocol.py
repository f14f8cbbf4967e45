"""The rules of the agent protocol (cluster/protocol/agent.proto) that every
server of it applies, whatever its transport.

The daemon serves it with `aio_service.AioAgentServer`; a threaded server
for tests and benchmarks (bench/sync_service.py) applies the same rules from
here. Nothing here decides anything about tasks: a server checks the token
and the epoch (rule 4) and posts what the agent says to the runtime as
`inbox` events.

Refusals: a wrong or missing token -> UNAUTHENTICATED; not leading ->
FAILED_PRECONDITION "not leader..."; a message carrying another epoch ->
FAILED_PRECONDITION "stale epoch E; the leader's epoch is X"; a Hello whose
name breaks the naming rules (cluster.names) -> INVALID_ARGUMENT; with client
certificates, a Hello for a name the certificate does not grant ->
PERMISSION_DENIED; a Hello for an agent already connected -> ALREADY_EXISTS
(docs/design.md section 9, see `ConnectedAgents`).
"""
from __future__ import annotations

import hmac
import threading
import time
from typing import Callable, Protocol

import grpc

from cluster.names import AGENT_URI_PREFIX, ANY_AGENT, check_name
from cluster.protocol import agent_pb2 as pb
from coordinator.runtime.inbox import CompilingChanged, Event, ResultReceived
from lease.errors import ConfigError

STARTING_UP_WAIT = 1.0  # s a Hello may wait for a coordinator that just won to start leading
# An agent heartbeats every second (agent/link.py). A stream not heard from for this long
# is taken for dead (a half-open connection after a network blip), and the agent may
# connect again under its name; a live one keeps its name (see ConnectedAgents).
SILENT_AFTER = 3.0


class AgentStream(Protocol):
    """One connected agent's stream, as the dispatcher sees it. All methods
    are safe from any thread and after the end (they then do nothing)."""

    agent: str
    epoch: int
    closed: bool
    heard: float     # time.monotonic() when the agent's last message arrived

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


def certificate_agents(context: grpc.ServicerContext) -> frozenset[str] | None:
    """The agent names the peer's client certificate grants (its SubjectAltName
    URIs urn:baton:agent:<name>); None when the call carries no certificate
    (a plaintext server: the cluster token is all there is). Only the URI
    counts, not the common name or a DNS name: the coordinators' host
    certificates from the same CA must not pass for agents."""
    auth = context.auth_context() or {}
    if "x509_pem_cert" not in auth:
        return None
    return frozenset(raw.decode("utf-8", "replace")[len(AGENT_URI_PREFIX):]
                     for raw in auth.get("x509_subject_alternative_name", ())
                     if raw.startswith(AGENT_URI_PREFIX.encode()))


def hello_refusal(name: str, granted: frozenset[str] | None) -> tuple[grpc.StatusCode, str] | None:
    """Why a Hello for `name` is refused, as (code, one sentence), or None.
    granted: the names the peer's certificate grants (certificate_agents)."""
    try:
        check_name("agent", name)
    except ConfigError as exc:
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if granted is not None and name not in granted and ANY_AGENT not in granted:
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"this client certificate does not name agent {name}"
                + (f" (it names {', '.join(sorted(granted))})" if granted else " (it names no agent)"))
    return None


class ConnectedAgents:
    """Which stream speaks for each agent on one server, so that a second
    connection under a live agent's name is refused, never a takeover.

    The rule: a Hello for agent X is admitted unless X already has a stream
    here that is open, of the same epoch, and was heard from within
    `silent_after` seconds. An old stream of another epoch belongs to a
    leadership that is over; a silent one is taken for half-open (the agent
    lost its connection and dials again, and its old stream never learnt).
    The admitted stream then speaks for X (the dispatcher ends the old one).
    Thread-safe."""

    def __init__(self, silent_after: float = SILENT_AFTER, clock: Callable[[], float] = time.monotonic):
        self.silent_after = silent_after
        self.clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, AgentStream] = {}

    def admit(self, stream: AgentStream) -> str | None:
        """Register stream as its agent's; or the sentence saying why not."""
        with self._lock:
            old = self._streams.get(stream.agent)
            if (old is not None and old is not stream and not old.closed and old.epoch == stream.epoch
                    and self.clock() - old.heard < self.silent_after):
                return f"agent {stream.agent} is already connected"
            self._streams[stream.agent] = stream
            return None

    def gone(self, stream: AgentStream) -> None:
        """The stream ended: its agent may connect again at once."""
        with self._lock:
            if self._streams.get(stream.agent) is stream:
                del self._streams[stream.agent]


def handle_agent_message(message: pb.AgentMessage, stream: AgentStream,
                         post: Callable[[Event, int], bool]) -> bool:
    """One message after the Hello, for every server of the protocol.
    Returns False when the stream must end (it was aborted: stale epoch, a second Hello)."""
    stream.heard = time.monotonic()
    if message.epoch != stream.epoch:
        stream.abort(grpc.StatusCode.FAILED_PRECONDITION, stale_epoch(message.epoch, stream.epoch))
        return False
    body = message.WhichOneof("body")
    if body == "result":
        post(ResultReceived(stream, message.result), stream.epoch)
    elif body == "compiling":
        post(CompilingChanged(stream, message.compiling.jobs), stream.epoch)
    elif body == "hello":
        stream.abort(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may be a Hello")
        return False
    # Heartbeats only keep the stream busy; presence is the agent's lease.
    return True
