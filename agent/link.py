"""One gRPC stream (Connect) to the coordinator that the leader key names.

A `CoordinatorLink` belongs to one leader view (name, gRPC address, epoch).
It opens the stream, says Hello, hands every coordinator message to its
handler (the Agent), sends results and a heartbeat every second, and when
the stream breaks opens it again after a short backoff (100 ms doubling to
1 s). It never decides whether its coordinator is still the leader: the
agent closes the link when the leader key changes.

How a stream ends decides what happens next:
- Goodbye, or any message of the link's epoch once the agent sees another
  (the leader key moved on): wait for the leader-key watch (it closes this
  link), retrying after max_backoff if it does not;
- a coordinator message carrying another epoch than the link's: ignored,
  the stream is closed (docs/design.md section 3, rule 4), the leader key is read again;
- FAILED_PRECONDITION (not leader / stale epoch): the leader key is read
  again (the watch may lag), then retry;
- UNAUTHENTICATED: one clear log sentence, retry every few seconds (the
  operator must fix the token; hammering the coordinator would not help);
- anything else (coordinator down, network): retry with the short backoff.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

import grpc

from agent.channels import Channels
from cluster.protocol import agent_pb2, agent_pb2_grpc, unbatched
from cluster.records import LeaderRecord

log = logging.getLogger(__name__)

_END = object()  # ends the request stream


class LinkHandler(Protocol):
    """What a link needs from its agent. `lock` guards the hello snapshot
    against results finishing at the same moment."""

    lock: threading.RLock

    def hello(self) -> agent_pb2.Hello: ...
    def seen_epoch(self) -> int | None: ...
    def on_message(self, link: "CoordinatorLink", message: agent_pb2.CoordinatorMessage) -> None: ...
    def on_link_state(self, link: "CoordinatorLink") -> None: ...
    def recheck_leader(self) -> None: ...


_GO_ON = object()  # LinkBase._take: the stream goes on


class LinkBase:
    """What every link shares: its leader view and state, standby and
    activation, and what to make of each coordinator message and each way a
    stream can end. Subclasses run the streams: `CoordinatorLink` on threads
    (the agent), `bench.aio_link.AioCoordinatorLink` on one event loop for
    many agents (the bench pool)."""

    def __init__(self, leader: LeaderRecord, handler: LinkHandler, token: str | None = None,
                 heartbeat_interval: float = 1.0,
                 min_backoff: float = 0.1, max_backoff: float = 1.0, refused_backoff: float = 5.0,
                 agent_name: str = "", standby: bool = False):
        self.leader = leader
        self.epoch = leader.epoch
        self.handler = handler
        self.token = token
        self.heartbeat_interval = heartbeat_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.refused_backoff = refused_backoff
        self.agent_name = agent_name
        self.welcomed = False
        self.coordinator: str | None = None  # the name its Welcome gave
        self.streams_opened = 0
        self._closed = threading.Event()
        self._activated = not standby  # the Hello may go out (at once, unless standing by)
        self._refused_logged = False
        self._running = False
        self._stream_welcomed = False   # the current stream got its Welcome
        self._outq = None               # the open stream's send queue, once its Hello is out

    @property
    def alive(self) -> bool:
        """The link still runs (a closed link may take a moment to end). A
        flag: the agent asks at every turn, for each of its links."""
        return self._running

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def standing_by(self) -> bool:
        return not self._activated

    def activate(self, leader: LeaderRecord) -> bool:
        """A standby link becomes the link to `leader`, if that is the
        coordinator it stands by for: its stream sends the Hello now. False
        (nothing changed) otherwise, or if the link is closed or gone."""
        if (not self.standing_by or self.closed or not self.alive
                or (leader.name, leader.grpc) != (self.leader.name, self.leader.grpc)):
            return False
        self.leader, self.epoch = leader, leader.epoch
        self._activated = True
        self._let_hello_go()
        return True

    def _let_hello_go(self) -> None:
        raise NotImplementedError

    def message(self, **body) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(epoch=self.epoch, **body)

    def _metadata(self):
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def _take(self, msg: agent_pb2.CoordinatorMessage):
        """One coordinator message: _GO_ON, or the pause before the next
        stream (None: the normal backoff) once this one must end."""
        kind = msg.WhichOneof("body")
        seen = self.handler.seen_epoch()
        if msg.epoch == self.epoch and (kind == "goodbye" or seen != self.epoch):
            # Our coordinator says goodbye, or the leader key has moved on from it (a
            # handover resigns before the goodbyes): this link is over, and the watch
            # that told us so closes it. Re-reading the key or dialling again now would
            # only load etcd and the old leader while the handover needs them; if the
            # watch stays silent, retry after a while.
            if kind == "goodbye":
                log.info("%s said goodbye: %s", self.leader.name, msg.goodbye.reason or "no reason given")
            return self.max_backoff
        if msg.epoch != self.epoch or msg.epoch != seen:
            log.warning("ignoring a message from %s for epoch %d (this agent sees epoch %s); "
                        "closing the stream", self.leader.name, msg.epoch, seen)
            self._recheck()
            return None
        if kind == "welcome":
            self._stream_welcomed = self.welcomed = True
            self.coordinator = msg.welcome.coordinator or self.leader.name
            self._refused_logged = False
            log.info("connected to %s", self.leader)
            self.handler.on_message(self, msg)
            self.handler.on_link_state(self)
        else:
            self.handler.on_message(self, msg)
        return _GO_ON

    def _stream_over(self) -> None:
        """The current stream ended: no more sending on it; tell the agent if it was up."""
        with self.handler.lock:
            self._drop_outq()
            was_welcomed, self.welcomed = self.welcomed, False
        if was_welcomed:
            log.info("stream to %s closed; running tasks continue", self.leader)
            self.handler.on_link_state(self)

    def send(self, message: agent_pb2.AgentMessage) -> bool:
        """Queue a message on the open stream (call with handler.lock held).
        False when no stream is open: the caller keeps it for the next Hello."""
        outq = self._outq
        if outq is None:
            return False
        self._enqueue(outq, message)
        return True

    def _enqueue(self, outq, message: agent_pb2.AgentMessage) -> None:
        raise NotImplementedError

    def _drop_outq(self) -> None:
        self._outq = None

    def _after_error(self, exc: grpc.RpcError) -> float | None:
        code, detail = exc.code(), exc.details()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if not self._refused_logged:
                log.error("coordinator %s refused this agent's cluster token (%s); check BATON_AGENT_TOKEN "
                          "or --agent-token-file. Retrying every %g s.",
                          self.leader.name, detail, self.refused_backoff)
                self._refused_logged = True
            return self.refused_backoff
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            log.info("%s refused the stream (%s); reading the leader key again", self.leader.name, detail)
            self._recheck()
            if detail and detail.startswith("not leader"):
                # The leader key names it but its runtime is still loading (it won a moment
                # ago): try again soon, without the growing backoff, so agents arrive at once.
                return self.min_backoff / 2
            return None
        log.info("stream to %s broke (%s: %s); retrying", self.leader, code.name if code else "?", detail)
        return None

    def _recheck(self) -> None:
        try:
            self.handler.recheck_leader()
        except Exception as exc:  # noqa: BLE001 - the watch will tell us later anyway
            log.info("could not re-read the leader key: %s", exc)


class CoordinatorLink(LinkBase):
    """Use: `CoordinatorLink(view, agent, channels, token).start()`, then `close()`.
    `welcomed` is True while a stream is up and the coordinator said Welcome.

    A standby link (`standby=True`, for a planned handover's successor, whose
    epoch is not known yet) opens its stream with a Standby message and
    holds it; `activate(view)` once the leader key names that coordinator
    sends the Hello on it. One thread per link (and gRPC's, per stream)."""

    def __init__(self, leader: LeaderRecord, handler: LinkHandler, channels: Channels, token: str | None = None,
                 **options):
        super().__init__(leader, handler, token, **options)
        self.channels = channels
        self._active = threading.Event()
        if self._activated:
            self._active.set()
        self._call = None
        self._call_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"link {self.agent_name}->{leader.name}#{leader.epoch}")

    def start(self) -> "CoordinatorLink":
        self._running = True
        self._thread.start()
        return self

    def close(self) -> None:
        """End the stream and stop reconnecting. Returns at once; never raises."""
        self._closed.set()
        self._active.set()  # a standing-by request stream sees it is closed and ends
        with self._call_lock:
            call = self._call
        if call is not None:
            call.cancel()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def _let_hello_go(self) -> None:
        self._active.set()

    def _enqueue(self, outq: queue.Queue, message: agent_pb2.AgentMessage) -> None:
        outq.put(message)

    # -- the stream loop -------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._run_streams()
        finally:
            self._running = False

    def _run_streams(self) -> None:
        try:
            channel = self.channels.get(self.leader.grpc)
        except ValueError:
            return  # the agent is stopping
        backoff = self.min_backoff
        try:
            while not self._closed.is_set():
                pause, reset = self._stream_once(channel)
                if reset:
                    backoff = self.min_backoff
                if self._closed.is_set():
                    break
                if pause is None:
                    pause, backoff = backoff, min(self.max_backoff, backoff * 2)
                self._closed.wait(pause)
        except Exception:  # noqa: BLE001 - a bug here must not leave the agent silently unlinked
            log.exception("link to %s failed", self.leader)

    def _stream_once(self, channel: grpc.Channel) -> tuple[float | None, bool]:
        """One stream from Hello to its end. Returns (pause before the next
        attempt or None for the normal backoff, whether a Welcome came)."""
        outq: queue.Queue = queue.Queue()
        over = threading.Event()  # this stream ended: its request side must not take over _outq
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.Connect(self._requests(outq, over), metadata=self._metadata())
        with self._call_lock:
            self._call = call
        if self._closed.is_set():
            call.cancel()
        self.streams_opened += 1
        self._stream_welcomed = False
        try:
            for msg in (m for received in call for m in unbatched(received)):
                outcome = self._take(msg)
                if outcome is not _GO_ON:
                    return outcome, self._stream_welcomed
            return None, self._stream_welcomed  # the coordinator ended the stream
        except grpc.RpcError as exc:
            if self._closed.is_set():
                return None, self._stream_welcomed
            return self._after_error(exc), self._stream_welcomed
        finally:
            with self.handler.lock:
                over.set()
            self._stream_over()
            outq.put(_END)
            with self._call_lock:
                self._call = None
            call.cancel()

    def _requests(self, outq: queue.Queue, over: threading.Event):
        """The request side of the stream: (Standby, wait for activate(),) the
        Hello, then queued messages, with a heartbeat at least every heartbeat_interval."""
        if self.standing_by:
            yield agent_pb2.AgentMessage(epoch=0, standby=agent_pb2.Standby(name=self.agent_name))
            self._active.wait()
        with self.handler.lock:  # no result can slip between this snapshot and the queue taking results
            if self._closed.is_set() or over.is_set():
                return
            hello = self.message(hello=self.handler.hello())
            self._outq = outq
        yield hello
        next_beat = time.monotonic() + self.heartbeat_interval
        while True:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                yield self.message(heartbeat=agent_pb2.Heartbeat(sent_unix_ns=time.time_ns()))
                continue
            try:
                item = outq.get(timeout=next_beat - now)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

