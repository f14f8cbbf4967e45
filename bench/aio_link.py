"""Links on one asyncio event loop: the bench pool's many agents in one process.

`agent.link.CoordinatorLink` runs a thread per link and gRPC's sync API adds
one per stream: a pool process of 50 agents (an active and a standby link
each) held ~250 threads, which convoyed on the interpreter lock at every
handover, so the last agent of a process moved ~150 ms after the first
(bench/failover.py). `AioLinks` runs every link of a process as a task on
one event loop over grpc.aio, one channel per coordinator address. The
protocol, the epoch checks and what each way a stream ends means are
`agent.link.LinkBase`'s, shared with the threaded link; a real agent (one
process each) keeps the threaded one.

The agent's callbacks (on_message, on_link_state) run on the loop's thread,
as they run on a link's thread otherwise; re-reading the leader key (an etcd
call) goes to an executor so that it never blocks the loop.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import grpc

from agent.channels import OPTIONS
from agent.link import _GO_ON, LinkBase, LinkHandler
from cluster.protocol import agent_pb2, agent_pb2_grpc, unbatched
from cluster.records import LeaderRecord

log = logging.getLogger(__name__)


class AioLinks:
    """The loop and its channels. `link(...)` makes an AioCoordinatorLink
    (same arguments as CoordinatorLink, without channels); `close()` ends
    every stream and the loop."""

    def __init__(self, root_certificates: bytes | None = None, client: tuple[bytes, bytes] | None = None):
        """As agent.channels.Channels: client is the (private key, certificate) PEM the
        coordinators require with TLS on (the pool's: bench.pool_process)."""
        key, chain = client or (None, None)
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=root_certificates,
                                                          private_key=key, certificate_chain=chain)
                             if root_certificates is not None else None)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agent links loop", daemon=True)
        self._thread.start()

    def link(self, leader: LeaderRecord, handler: LinkHandler, token: str | None = None,
             **options) -> "AioCoordinatorLink":
        return AioCoordinatorLink(leader, handler, self, token, **options)

    def channel(self, address: str) -> grpc.aio.Channel:
        """On the loop's thread only."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = (
                grpc.aio.secure_channel(address, self._credentials, options=OPTIONS)
                if self._credentials is not None else grpc.aio.insecure_channel(address, options=OPTIONS))
        return channel

    def close(self) -> None:
        async def close_channels() -> None:
            for channel in list(self._channels.values()):
                await channel.close()
        try:
            asyncio.run_coroutine_threadsafe(close_channels(), self.loop).result(5)
        except Exception:  # noqa: BLE001 - closing must finish
            log.exception("closing the links' channels failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class AioCoordinatorLink(LinkBase):
    """CoordinatorLink's behaviour (see agent.link) as a task on AioLinks' loop."""

    def __init__(self, leader: LeaderRecord, handler: LinkHandler, links: AioLinks, token: str | None = None,
                 **options):
        super().__init__(leader, handler, token, **options)
        self.links = links
        self._loop = links.loop
        self._wake = asyncio.Event()      # activate() or close(): the loop looks again
        self._call = None
        self._future = None

    def start(self) -> "AioCoordinatorLink":
        self._running = True
        self._future = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        return self

    def close(self) -> None:
        """End the stream and stop reconnecting. Returns at once; never raises."""
        self._closed.set()
        self._loop.call_soon_threadsafe(self._on_close)

    def _on_close(self) -> None:
        self._wake.set()
        if self._call is not None:
            self._call.cancel()

    def join(self, timeout: float = 5.0) -> None:
        try:
            self._future.result(timeout)
        except Exception:  # noqa: BLE001 - joined to wait, not to report
            pass

    def _let_hello_go(self) -> None:
        self._loop.call_soon_threadsafe(self._wake.set)

    def _enqueue(self, outq: asyncio.Queue, message: agent_pb2.AgentMessage) -> None:
        self._loop.call_soon_threadsafe(outq.put_nowait, message)

    def _recheck(self) -> None:
        self._loop.run_in_executor(None, super()._recheck)

    # -- on the loop ----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            channel = self.links.channel(self.leader.grpc)
            backoff = self.min_backoff
            while not self.closed:
                pause, reset = await self._stream_once(channel)
                if reset:
                    backoff = self.min_backoff
                if self.closed:
                    break
                if pause is None:
                    pause, backoff = backoff, min(self.max_backoff, backoff * 2)
                await self._until_woken(pause)
        except Exception:  # noqa: BLE001 - a bug here must not leave the agent silently unlinked
            log.exception("link to %s failed", self.leader)
        finally:
            self._running = False

    async def _until_woken(self, timeout: float | None) -> None:
        self._wake.clear()
        if self.closed:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _stream_once(self, channel: grpc.aio.Channel) -> tuple[float | None, bool]:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(metadata=self._metadata())
        self._call = call
        self.streams_opened += 1
        self._stream_welcomed = False
        writer = None
        try:
            if self.standing_by:
                await call.write(agent_pb2.AgentMessage(epoch=0, standby=agent_pb2.Standby(name=self.agent_name)))
                while self.standing_by and not self.closed:
                    await self._until_woken(None)
            if self.closed:
                return None, False
            with self.handler.lock:  # no result can slip between this snapshot and the queue taking results
                hello = self.message(hello=self.handler.hello())
                outq: asyncio.Queue = asyncio.Queue()
                self._outq = outq
            await call.write(hello)
            writer = asyncio.ensure_future(self._write(call, outq))
            async for received in call:
                for msg in unbatched(received):
                    outcome = self._take(msg)
                    if outcome is not _GO_ON:
                        return outcome, self._stream_welcomed
            return None, self._stream_welcomed  # the coordinator ended the stream
        except asyncio.CancelledError:
            if not self.closed:
                raise
            return None, self._stream_welcomed
        except grpc.RpcError as exc:
            if self.closed:
                return None, self._stream_welcomed
            return self._after_error(exc), self._stream_welcomed
        finally:
            self._stream_over()
            if writer is not None:
                writer.cancel()
            self._call = None
            call.cancel()

    async def _write(self, call, outq: asyncio.Queue) -> None:
        """Queued messages, with a heartbeat at least every heartbeat_interval."""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(outq.get(), self.heartbeat_interval)
                except asyncio.TimeoutError:
                    item = self.message(heartbeat=agent_pb2.Heartbeat(sent_unix_ns=time.time_ns()))
                await call.write(item)
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the stream ended: the reading side says how
