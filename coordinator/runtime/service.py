"""The gRPC side of the agent protocol (cluster/protocol/agent.proto).

`AgentService` is registered on the daemon's gRPC server for the
coordinator's whole life; it refuses streams while its runtime is not
leading. Each accepted stream becomes an `AgentStream`: the handler thread
yields what the dispatcher puts in the stream's outbox, and a reader thread
turns the agent's messages into dispatcher events. Nothing here decides
anything about tasks; it checks the token and the epoch (rule 4) and passes
messages on.

Refusals: a wrong or missing token -> UNAUTHENTICATED; not leading ->
FAILED_PRECONDITION "not leader..."; a message carrying another epoch ->
FAILED_PRECONDITION "stale epoch E; the leader's epoch is X".
"""
from __future__ import annotations

import hmac
import logging
import queue
import threading
from typing import Any, Callable, Iterator, Protocol

import grpc

from cluster.protocol import agent_pb2 as pb
from cluster.protocol import agent_pb2_grpc

log = logging.getLogger(__name__)

_END = object()
STARTING_UP_WAIT = 1.0  # s a Hello may wait for a coordinator that just won to start leading


class _Abort:
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details


def stale_epoch(sent: int, ours: int) -> str:
    return f"stale epoch {sent}; the leader's epoch is {ours}"


def handle_agent_message(message: pb.AgentMessage, stream, post: Callable[[tuple, int], bool]) -> bool:
    """One message after the Hello, for both servers (threaded and asyncio).
    Returns False when the stream must end (it was aborted: stale epoch, a second Hello)."""
    if message.epoch != stream.epoch:
        stream.abort(grpc.StatusCode.FAILED_PRECONDITION, stale_epoch(message.epoch, stream.epoch))
        return False
    body = message.WhichOneof("body")
    if body == "result":
        post(("result", stream, message.result), stream.epoch)
    elif body == "hello":
        stream.abort(grpc.StatusCode.INVALID_ARGUMENT, "only the first message may be a Hello")
        return False
    # Heartbeats only keep the stream busy; presence is the agent's lease.
    return True


class AgentStream:
    """One connected agent's stream, as the dispatcher sees it: `send`
    queues a message, `end` says Goodbye and closes, `abort` ends it with a
    gRPC error. All three are safe from any thread and after the end."""

    def __init__(self, agent: str, epoch: int, peer: str = ""):
        self.agent = agent
        self.epoch = epoch
        self.peer = peer
        self.closed = False
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()

    def send(self, message: pb.CoordinatorMessage) -> None:
        if not self.closed:
            self._outbox.put(message)

    def send_all(self, messages: list[pb.CoordinatorMessage]) -> None:
        for message in messages:
            self.send(message)

    def end(self, goodbye: str | None = None) -> None:
        if self.closed:
            return
        if goodbye is not None:
            self._outbox.put(pb.CoordinatorMessage(epoch=self.epoch, goodbye=pb.Goodbye(reason=goodbye)))
        self.closed = True
        self._outbox.put(_END)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        if not self.closed:
            self.closed = True
            self._outbox.put(_Abort(code, details))

    def messages(self, context: grpc.ServicerContext) -> Iterator[pb.CoordinatorMessage]:
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            if isinstance(item, _Abort):
                context.abort(item.code, item.details)
            yield item


class Leading(Protocol):
    """What the servicer needs from the runtime."""

    name: str
    agent_token: str | None

    @property
    def epoch(self) -> int | None: ...

    def not_leader_message(self) -> str: ...

    def wait_leading(self, timeout: float) -> int | None: ...

    def post(self, event: tuple, epoch: int) -> bool: ...


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """Connect: the one RPC. One handler thread per stream (the server's
    pool must have more workers than agents) plus one reader thread."""

    def __init__(self, runtime: Leading):
        self._runtime = runtime

    def Connect(self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext):
        rt = self._runtime
        if rt.agent_token is not None and not _token_ok(context, rt.agent_token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong agent token")
        try:
            first = next(request_iterator)
            if first.WhichOneof("body") == "standby":
                first = next(request_iterator)  # held until the agent's Hello: it moves here at a handover
        except (StopIteration, grpc.RpcError):
            return
        epoch = rt.epoch
        if epoch is None and first.epoch > 0:
            # The agent already sees a leader key naming us: we won and are starting up.
            epoch = rt.wait_leading(STARTING_UP_WAIT)
        if epoch is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, rt.not_leader_message())
        if first.epoch != epoch:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, stale_epoch(first.epoch, epoch))
        if first.WhichOneof("body") != "hello" or not first.hello.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Hello with the agent's name")
        stream = AgentStream(first.hello.name, epoch, context.peer())
        if not rt.post(("hello", stream, first.hello), epoch):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, rt.not_leader_message())
        context.add_callback(stream.end)  # the RPC ended (agent gone): unblock the handler
        reader = threading.Thread(target=self._read, args=(stream, request_iterator),
                                  name=f"agent-reader {stream.agent}", daemon=True)
        reader.start()
        yield from stream.messages(context)

    def _read(self, stream: AgentStream, request_iterator: Iterator[pb.AgentMessage]) -> None:
        post: Callable[[tuple, int], bool] = self._runtime.post
        try:
            for message in request_iterator:
                if not handle_agent_message(message, stream, post):
                    return
        except grpc.RpcError:
            pass  # the agent went away or the RPC was cancelled
        except Exception:  # noqa: BLE001
            log.exception("agent %s: reading the stream failed", stream.agent)
        finally:
            post(("gone", stream), stream.epoch)
            stream.end()


def _token_ok(context: grpc.ServicerContext, token: str) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return hmac.compare_digest(value.encode(), f"Bearer {token}".encode())
    return False


def message(epoch: int, **body: Any) -> pb.CoordinatorMessage:
    return pb.CoordinatorMessage(epoch=epoch, **body)
