"""The agent protocol (its rules: agent_protocol.py) on grpc.aio: what the daemon serves.

A threaded server (bench/sync_service.py) spends two threads and several
thread hand-offs per message (one handler thread per stream plus a reader
thread). `AioAgentServer` runs a grpc.aio server on one event loop in its
own thread: every stream is two coroutines, and the dispatcher hands
messages over with one `call_soon_threadsafe` per turn for all streams
(`_Waker`). Refusals as in
agent_protocol (token -> UNAUTHENTICATED, not leading / another epoch ->
FAILED_PRECONDITION, a bad name -> INVALID_ARGUMENT, a name the client
certificate does not grant -> PERMISSION_DENIED, an agent already connected
-> ALREADY_EXISTS).

The same server serves the Cores service (compile.proto): an initiator of
a `baton run` build holds one Want stream to the leader for helper cores
(coordinator/runtime/lending.py), with the cluster token like an agent,
and reports the build's start, jobs and end on it (run_records.py).

`AioAgentServer(runtime, "127.0.0.1:7000", credentials=None).start()` ->
bound port; `stop(grace)`.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import grpc

from cluster.keepalive import SERVER_OPTIONS
from cluster.protocol import agent_pb2 as pb
from cluster.protocol import agent_pb2_grpc, compile_pb2_grpc
from coordinator.runtime.agent_protocol import (STARTING_UP_WAIT, ConnectedAgents, Leading, certificate_agents,
                                                handle_agent_message, hello_refusal, stale_epoch, token_ok)
from coordinator.runtime.inbox import CoresGone, CoresWanted, HelloReceived, RunReported, StreamGone

log = logging.getLogger(__name__)

_END = object()


class _Waker:
    """Moves what other threads queued for this loop's streams onto it, in one wake-up for
    all streams (one self-pipe write per dispatcher turn, not one per stream it wrote to).
    Order per stream is kept: one deque for all."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._pending: collections.deque = collections.deque()   # (stream, items)
        self._scheduled = False

    def put(self, stream: "AioAgentStream", items) -> None:
        self._pending.append((stream, items))   # atomic: a drain takes it or leaves it for the next
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

    def _drain(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending:
            stream, items = pending.popleft()
            put = stream._outbox.put_nowait
            for item in items:
                put(item)


class AioAgentStream:
    """The dispatcher's handle on one aio stream (an agent_protocol.AgentStream)."""

    def __init__(self, agent: str, epoch: int, loop: asyncio.AbstractEventLoop, waker: _Waker | None = None):
        self.agent = agent
        self.epoch = epoch
        self.closed = False
        self.heard = time.monotonic()
        self._outbox: asyncio.Queue = asyncio.Queue()
        # Messages from the dispatcher thread wait in the waker; one loop wake-up
        # moves all that arrived meanwhile, for every stream.
        self._waker = waker if waker is not None else _Waker(loop)

    def _put(self, item) -> None:
        self._waker.put(self, (item,))

    def _put_all(self, items) -> None:
        self._waker.put(self, items)

    def send(self, message: pb.CoordinatorMessage) -> None:
        if not self.closed:
            self._put(message)

    def send_all(self, messages: list[pb.CoordinatorMessage]) -> None:
        """Several messages that go out in one write (a Batch)."""
        if not self.closed:
            self._put_all(messages)

    def end(self, goodbye: str | None = None) -> None:
        if self.closed:
            return
        if goodbye is not None:
            self._put(pb.CoordinatorMessage(epoch=self.epoch, goodbye=pb.Goodbye(reason=goodbye)))
        self.closed = True
        self._put(_END)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        if not self.closed:
            self.closed = True
            self._put((code, details))


class _AioService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, runtime: Leading, waker: _Waker):
        self._runtime = runtime
        self._waker = waker
        self._connected = ConnectedAgents()

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        rt = self._runtime
        if rt.agent_token is not None and not token_ok(context, rt.agent_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong agent token")
        first = await context.read()
        if first is not grpc.aio.EOF and first.WhichOneof("body") == "standby":
            first = await context.read()  # held until the agent's Hello: it moves here at a handover
        if first is grpc.aio.EOF:
            return
        epoch = rt.epoch
        if epoch is None and first.epoch > 0:
            # The agent already sees a leader key naming us: we won and are starting up.
            deadline = asyncio.get_running_loop().time() + STARTING_UP_WAIT
            while epoch is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
                epoch = rt.epoch
        if epoch is None:
            message = await asyncio.get_running_loop().run_in_executor(None, rt.not_leader_message)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        if first.epoch != epoch:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, stale_epoch(first.epoch, epoch))
        if first.WhichOneof("body") != "hello" or not first.hello.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message must be a Hello with the agent's name")
        refusal = hello_refusal(first.hello.name, certificate_agents(context))
        if refusal is not None:
            await context.abort(*refusal)
        stream = AioAgentStream(first.hello.name, epoch, asyncio.get_running_loop(), self._waker)
        busy = self._connected.admit(stream)
        if busy is not None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, busy)
        try:
            await self._serve_stream(stream, first, epoch, context)
        finally:
            self._connected.gone(stream)

    async def _serve_stream(self, stream: AioAgentStream, first: pb.AgentMessage, epoch: int, context) -> None:
        rt = self._runtime
        if not rt.post(HelloReceived(stream, first.hello), epoch):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not leader")
        reader = asyncio.ensure_future(self._read(stream, context))
        try:
            while True:
                # Everything queued goes out in one write: an ack and the Assignment it released
                # arrive together, and a busy stream costs fewer writes.
                items = [await stream._outbox.get()]
                while not stream._outbox.empty():
                    items.append(stream._outbox.get_nowait())
                last = next((i for i, item in enumerate(items) if item is _END or isinstance(item, tuple)), None)
                messages = items if last is None else items[:last]
                if messages:
                    await context.write(messages[0] if len(messages) == 1 else
                                        pb.CoordinatorMessage(epoch=epoch, batch=pb.Batch(messages=messages)))
                if last is not None:
                    if items[last] is _END:
                        return
                    await context.abort(*items[last])
        finally:
            reader.cancel()
            rt.post(StreamGone(stream), epoch)
            stream.closed = True

    async def _read(self, stream: AioAgentStream, context) -> None:
        post = self._runtime.post
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                if not handle_agent_message(message, stream, post):
                    return
        except (asyncio.CancelledError, grpc.RpcError, grpc.aio.AbortError, grpc.aio.UsageError):
            return  # the stream was ended (by us, the agent or a leadership change): nothing to report
        except Exception:  # noqa: BLE001
            log.exception("agent %s: reading the stream failed", stream.agent)
        stream.end()


class _AioCores(compile_pb2_grpc.CoresServicer):
    def __init__(self, runtime: Leading, waker: _Waker):
        self._runtime = runtime
        self._waker = waker

    async def Want(self, request_iterator, context: grpc.aio.ServicerContext):
        rt = self._runtime
        if rt.agent_token is not None and not token_ok(context, rt.agent_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        epoch = rt.epoch
        if epoch is None:
            message = await asyncio.get_running_loop().run_in_executor(None, rt.not_leader_message)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
        if not first.build:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must name the build")
        stream = AioAgentStream(first.build, epoch, asyncio.get_running_loop(), self._waker)
        if not rt.post(CoresWanted(stream, first.build, first.cores), epoch):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not leader")
        if _reports(first):
            rt.post(RunReported(stream, first), epoch)

        async def read() -> None:
            try:
                while (request := await context.read()) is not grpc.aio.EOF:
                    rt.post(CoresWanted(stream, first.build, request.cores, tuple(request.busy.items())), epoch)
                    if _reports(request):
                        request.build = first.build   # one stream, one build
                        rt.post(RunReported(stream, request), epoch)
            except (asyncio.CancelledError, grpc.RpcError, grpc.aio.AbortError, grpc.aio.UsageError):
                return
            stream.end()   # the initiator is done: its grants end

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await stream._outbox.get()
                if item is _END:
                    return
                if isinstance(item, tuple):
                    await context.abort(*item)
                await context.write(item)
        finally:
            reader.cancel()
            rt.post(CoresGone(stream), epoch)
            stream.closed = True


def _reports(request) -> bool:
    """Whether the request carries a run build's start, jobs or end (run_records.py)."""
    return request.HasField("start") or bool(request.jobs) or request.HasField("end")


class AioAgentServer:
    """A grpc.aio server for AgentService on its own thread and event loop."""

    def __init__(self, runtime: Leading, address: str, credentials: grpc.ServerCredentials | None = None):
        self._runtime = runtime
        self.address = address
        self._credentials = credentials
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.port: int | None = None

    def start(self, timeout: float = 10.0) -> int:
        """Bind and serve; returns the bound port. Raises OSError if it cannot bind."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="agent-grpc-aio", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise OSError(f"cannot serve agents on {self.address}: {failure[0] if failure else 'timed out'}")
        return self.port

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        server = grpc.aio.server(options=SERVER_OPTIONS)   # the agents' keepalive pings are welcome
        waker = _Waker(asyncio.get_running_loop())
        agent_pb2_grpc.add_AgentServiceServicer_to_server(_AioService(self._runtime, waker), server)
        compile_pb2_grpc.add_CoresServicer_to_server(_AioCores(self._runtime, waker), server)
        if self._credentials is not None:
            self.port = server.add_secure_port(self.address, self._credentials)
        else:
            self.port = server.add_insecure_port(self.address)
        if not self.port:
            raise OSError(f"cannot listen on {self.address}")
        await server.start()
        self._server = server
        ready.set()
        await self._stopped.wait()

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (streams end after `grace` seconds) and join the thread."""
        loop, server = self._loop, self._server
        if loop is None or server is None or loop.is_closed():
            return

        async def shutdown() -> None:
            await server.stop(grace)
            self._stopped.set()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result((grace or 0) + 5)
        except Exception:  # noqa: BLE001 - stopping must not raise
            log.exception("agent aio server: stop failed")
        if self._thread is not None:
            self._thread.join(5)
