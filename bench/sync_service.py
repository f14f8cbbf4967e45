"""The agent protocol on a threaded grpc.server: for tests and
`bench/dispatch.py --transport sync` only (the daemon serves
coordinator/runtime/aio_service.py, about half the CPU per task).

`add_to_server(runtime, server)` registers an `AgentService` for a Runtime
on a `grpc.server(ThreadPoolExecutor(...))`, whose pool must have more
workers than agents. Each accepted stream becomes an `AgentStream`: the
handler thread yields what the dispatcher puts in the stream's outbox, and a
reader thread turns the agent's messages into dispatcher events. The rules
(token, epoch, refusals) are coordinator/runtime/agent_protocol.py's.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator

import grpc

from cluster.protocol import agent_pb2 as pb
from cluster.protocol import agent_pb2_grpc
from coordinator.runtime.agent_protocol import (STARTING_UP_WAIT, ConnectedAgents, Leading, certificate_agents,
                                                handle_agent_message, hello_refusal, stale_epoch, token_ok)
from coordinator.runtime.inbox import Event, HelloReceived, StreamGone

log = logging.getLogger(__name__)

_END = object()


class _Abort:
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details


class AgentStream:
    """One connected agent's stream (an agent_protocol.AgentStream): `send`
    queues a message, `end` says Goodbye and closes, `abort` ends it with a
    gRPC error. All three are safe from any thread and after the end."""

    def __init__(self, agent: str, epoch: int, peer: str = ""):
        self.agent = agent
        self.epoch = epoch
        self.peer = peer
        self.closed = False
        self.heard = time.monotonic()
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


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """Connect: the one RPC. One handler thread per stream (the server's
    pool must have more workers than agents) plus one reader thread."""

    def __init__(self, runtime: Leading):
        self._runtime = runtime
        self._connected = ConnectedAgents()

    def Connect(self, request_iterator: Iterator[pb.AgentMessage], context: grpc.ServicerContext):
        rt = self._runtime
        if rt.agent_token is not None and not token_ok(context, rt.agent_token):
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
        refusal = hello_refusal(first.hello.name, certificate_agents(context))
        if refusal is not None:
            context.abort(*refusal)
        stream = AgentStream(first.hello.name, epoch, context.peer())
        busy = self._connected.admit(stream)
        if busy is not None:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, busy)
        if not rt.post(HelloReceived(stream, first.hello), epoch):
            self._connected.gone(stream)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, rt.not_leader_message())
        # The RPC ended (agent gone): unblock the handler, and the agent may connect again.
        context.add_callback(lambda: (stream.end(), self._connected.gone(stream)))
        reader = threading.Thread(target=self._read, args=(stream, request_iterator),
                                  name=f"agent-reader {stream.agent}", daemon=True)
        reader.start()
        yield from stream.messages(context)

    def _read(self, stream: AgentStream, request_iterator: Iterator[pb.AgentMessage]) -> None:
        post: Callable[[Event, int], bool] = self._runtime.post
        try:
            for message in request_iterator:
                if not handle_agent_message(message, stream, post):
                    return
        except grpc.RpcError:
            pass  # the agent went away or the RPC was cancelled
        except Exception:  # noqa: BLE001
            log.exception("agent %s: reading the stream failed", stream.agent)
        finally:
            post(StreamGone(stream), stream.epoch)
            stream.end()
            self._connected.gone(stream)


def add_to_server(runtime: Leading, server: grpc.Server) -> None:
    """Serve the agent protocol for runtime on a threaded gRPC server."""
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(runtime), server)
