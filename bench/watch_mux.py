"""Many etcd watches on one Watch stream (as etcd's own Go client does).

`lease.watcher.Watcher` owns a gRPC stream and two threads per watch. The
bench pool runs 50 agents in one process, each with its own watch of the
leader key: 100 threads waking at every leader change, on a 2-core machine
that also runs etcd and both coordinators, made the last agent hear of a
handover ~150 ms after the first (bench/failover.py). A `WatchMux` carries
every watch of a process on one stream read by one thread; each watch is
still its own etcd watch (its own id, start revision and events).

Per watch, as Watcher: events in order from start_revision (None: from
now); after a broken stream all watches are created again from their last
delivered revision + 1 (endpoint failover, backoff); a compacted start
revision re-reads the key(s) and delivers the difference as synthesized
events; progress requests and a liveness timeout detect a silent link; the
stream carries etcd's "require leader" flag.
"""
from __future__ import annotations

import collections
import logging
import queue
import random
import threading
import time
from typing import Callable, Iterator

from etcd3 import etcdrpc

from lease.client import Etcd
from lease.errors import EtcdUnavailable
from lease.session import fail_over, usable_channel, with_require_leader
from lease.watcher import (Delivered, WatchEvent, Watcher, create_request, read_current, read_stream,
                           silent_too_long, stream_error)

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.05


class MuxWatch:
    """One watch on a WatchMux: `start()`, `stop()`, `connected`, like a Watcher."""

    def __init__(self, mux: "WatchMux", key: str, prefix: bool, start_revision: int | None,
                 on_events: Callable[[list[WatchEvent]], None] | None):
        self.mux, self.key, self.prefix = mux, key, prefix
        self.watch_id: int | None = None   # etcd's id for it on the current stream, once created
        self.on_events = on_events
        self.last_revision: int | None = None if start_revision is None else start_revision - 1
        self.connected = threading.Event()
        self.compacted = False
        self._delivered = Delivered(key, prefix)

    def start(self) -> "MuxWatch":
        self.mux._add(self)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.mux._remove(self)
        self.connected.clear()

    def create_request(self) -> etcdrpc.WatchRequest:
        return create_request(self.key, self.prefix, self.last_revision)

    def deliver(self, events: list[WatchEvent]) -> None:
        self.last_revision = max(self.last_revision or 0, max(e.mod_revision for e in events))
        self._delivered.note(events)
        if self.on_events is not None:
            try:
                self.on_events(events)
            except Exception:  # noqa: BLE001 - a bad callback must not end the watches
                log.exception("watch %s: on_events raised", self.key)

    def resync(self, etcd: Etcd) -> None:
        """After compaction: read the key(s) now, deliver what changed, resume after the read."""
        current, revision = read_current(etcd, self.key, self.prefix)
        events = self._delivered.missed(current, self.last_revision or 0, revision)
        if events:
            self.deliver(events)
        self.last_revision = revision
        self.compacted = False


class WatchMux:
    """`watch(key, ...)` returns a MuxWatch (not started); `close()` ends them all."""

    def __init__(self, etcd: Etcd, progress_interval: float = 0.5, liveness_timeout: float | None = None,
                 max_backoff: float = 1.0):
        self.etcd = etcd
        self.progress_interval = progress_interval
        self.liveness_timeout = liveness_timeout or max(2.0, etcd.config.timeout)
        self.max_backoff = max_backoff
        self._watches: set[MuxWatch] = set()
        # On the open stream: creates sent and not yet answered, in order (etcd answers
        # creates in order, with the id it chose), and the created ones by that id.
        self._pending: collections.deque[MuxWatch] = collections.deque()
        self._by_id: dict[int, MuxWatch] = {}
        self._lock = threading.Lock()
        self._outbox: queue.Queue | None = None   # the open stream's requests
        self._call = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = _FIRST_BACKOFF

    def watch(self, key: str, prefix: bool = False, start_revision: int | None = None,
              on_events: Callable[[list[WatchEvent]], None] | None = None) -> MuxWatch:
        """Watcher's arguments; its tuning options (progress_interval, ...) are the mux's."""
        return MuxWatch(self, key, prefix, start_revision, on_events)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call, self._watches = self._call, set()
        if call is not None:
            call.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    # -- called by MuxWatch --------------------------------------------------------------
    def _add(self, w: MuxWatch) -> None:
        with self._lock:
            self._watches.add(w)
            if self._outbox is not None:  # else the next stream creates it
                self._pending.append(w)
                self._outbox.put(w.create_request())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watch mux", daemon=True)
                self._thread.start()

    def _remove(self, w: MuxWatch) -> None:
        with self._lock:
            self._watches.discard(w)
            if self._outbox is not None and w.watch_id is not None and self._by_id.pop(w.watch_id, None):
                self._outbox.put(_cancel(w.watch_id))

    # -- the stream -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._stream_once()
            except Exception as exc:  # noqa: BLE001 - every failure is logged and retried
                if self._closed.is_set():
                    break
                err = stream_error(exc)
                log.warning("watch stream: %s; creating its %d watches again", err, len(self._watches))
                fail_over(self.etcd)
                self._closed.wait(self._backoff * (0.5 + random.random()))
                self._backoff = min(self.max_backoff, self._backoff * 2)
            for w in list(self._watches):
                w.connected.clear()

    def _stream_once(self) -> None:
        for w in [w for w in list(self._watches) if w.compacted]:
            w.resync(self.etcd)
        outbox: queue.Queue = queue.Queue()
        with self._lock:
            self._pending.clear()
            self._by_id.clear()
            for w in self._watches:
                w.watch_id = None
                self._pending.append(w)
                outbox.put(w.create_request())
            self._outbox = outbox
        last_heard = [time.monotonic()]
        stub = etcdrpc.WatchStub(usable_channel(self.etcd))
        call = stub.Watch(self._requests(outbox, last_heard), **with_require_leader(self.etcd.call_kwargs))
        with self._lock:
            self._call = call
        if self._closed.is_set():
            call.cancel()
        try:
            read_stream(call, self._handle, last_heard, self.liveness_timeout, self._closed.is_set)
        finally:
            with self._lock:
                self._outbox = None
                self._call = None
            outbox.put(None)
            call.cancel()

    def _requests(self, outbox: queue.Queue, last_heard: list) -> Iterator:
        """Creates and cancels as they come, a progress request every progress_interval;
        cancels the call when etcd stays silent for liveness_timeout."""
        next_progress = time.monotonic() + self.progress_interval
        while True:
            try:
                request = outbox.get(timeout=max(0.0, next_progress - time.monotonic()))
                if request is None:
                    return
                yield request
                continue
            except queue.Empty:
                pass
            if self._closed.is_set():
                return
            if silent_too_long(last_heard, self.liveness_timeout):
                with self._lock:
                    call = self._call
                if call is not None:
                    call.cancel()
                return
            next_progress = time.monotonic() + self.progress_interval
            yield etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest())

    def _handle(self, response) -> None:
        if response.created:
            with self._lock:
                w = self._pending.popleft() if self._pending else None
                if w is not None and w in self._watches and not response.canceled:
                    w.watch_id = response.watch_id
                    self._by_id[response.watch_id] = w
                elif w is not None and not response.canceled and self._outbox is not None:
                    self._outbox.put(_cancel(response.watch_id))  # stopped before etcd created it
        else:
            w = self._by_id.get(response.watch_id)
        if w is None or w not in self._watches:
            return  # stopped meanwhile, or a stream-wide progress notification
        if response.compact_revision > 0:
            log.info("watch %s: revision %s was compacted; re-reading it", w.key, w.last_revision)
            w.compacted = True
            raise EtcdUnavailable(f"watch {w.key}: its start revision was compacted")
        if response.canceled:
            raise EtcdUnavailable(f"etcd cancelled the watch of {w.key}: {response.cancel_reason or 'no reason'}")
        if response.created:
            w.connected.set()
            self._backoff = _FIRST_BACKOFF
            if w.last_revision is None:
                w.last_revision = response.header.revision  # "from now": everything up to here is history
            return
        if response.events:
            w.deliver([Watcher._event(e) for e in response.events])


def _cancel(watch_id: int) -> etcdrpc.WatchRequest:
    return etcdrpc.WatchRequest(cancel_request=etcdrpc.WatchCancelRequest(watch_id=watch_id))
