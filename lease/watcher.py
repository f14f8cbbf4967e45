"""A Watcher that survives etcd restarts, member changes and compaction.

The etcd3 library's watcher does not re-subscribe after its stream breaks,
so this one owns a raw Watch gRPC stream in its own thread:

- after any stream error it re-subscribes from the last revision it
  delivered + 1, failing over to another endpoint (etcd.mark_failed), with
  backoff, until stop(); every failure goes to on_error and clears `connected`;
- when etcd has compacted past that revision it re-reads the current
  value(s) and resumes from that read's revision (on_reset, or the
  difference delivered as synthesized events);
- it asks etcd for a progress notification every `progress_interval` on the
  stream; if nothing at all arrives for `liveness_timeout` the connection is
  treated as dead (a blackholed link does not error on its own). The watches
  of a process on one channel (one HTTP/2 connection: what a blackhole or a
  frozen etcd silences, all its streams at once) share that evidence
  (`_Link`): anything any of them heard proves the link, and one progress
  request per interval on the channel serves them all. A leader's nine
  watches each asking twice a second cost ~30 % of an idle coordinator's CPU
  and a quarter of etcd's (bench/cluster_cpu.py, bench/README.md). A watch
  still gives up after liveness_timeout without a message on the channel,
  and whichever watch asks is the one that resubscribes if its answer does
  not come;
- the stream carries etcd's "require leader" flag, so a member cut off from
  quorum closes it instead of going silent.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc
from etcd3 import etcdrpc, utils

from lease.client import Etcd, map_error
from lease.errors import EtcdError, EtcdUnavailable
from lease.session import fail_over, usable_channel, with_require_leader

log = logging.getLogger(__name__)

_PUT, _DELETE = 0, 1
_FIRST_BACKOFF = 0.05


@dataclass(frozen=True)
class WatchEvent:
    """One change. For "delete", value is None and mod_revision is the delete's revision."""

    type: str  # "put" | "delete"
    key: str
    value: bytes | None
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class KV:
    """A key's current value, as read when re-syncing after compaction."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


class Delivered:
    """What a watch has delivered (key -> mod revision; for one key, whether
    the last event was its delete), so that a re-read after compaction can
    be turned into the events it missed."""

    def __init__(self, key: str, prefix: bool):
        self.key, self.prefix = key, prefix
        self._known: dict[str, int] = {}
        self._deleted = False

    def note(self, events: list[WatchEvent]) -> None:
        for e in events:
            if e.type == "put":
                self._known[e.key] = e.mod_revision
                self._deleted = False
            else:
                self._known.pop(e.key, None)
                self._deleted = not self.prefix

    def missed(self, current: dict[str, KV], after: int, revision: int) -> list[WatchEvent]:
        """The events between what was delivered (up to revision `after`) and `current`,
        read at `revision`. A prefix watch cannot synthesize deletes of keys it never saw."""
        gone = set(self._known) - set(current)
        if not self.prefix and self.key not in current and not self._deleted:
            # We may never have seen this key's put (it predates start_revision):
            # for one key, "absent now" is enough to say it was deleted.
            gone.add(self.key)
        events = [WatchEvent("delete", k, None, 0, revision, 0) for k in sorted(gone)]
        events += [WatchEvent("put", kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)
                   for kv in current.values() if kv.mod_revision > after]
        return events


def create_request(key: str, prefix: bool, last_revision: int | None) -> etcdrpc.WatchRequest:
    """The request that (re)creates a watch of key (or the prefix) after what it delivered."""
    create = etcdrpc.WatchCreateRequest(key=utils.to_bytes(key), progress_notify=True)
    if prefix:
        create.range_end = utils.to_bytes(utils.prefix_range_end(utils.to_bytes(key)))
    if last_revision is not None:
        create.start_revision = last_revision + 1
    return etcdrpc.WatchRequest(create_request=create)


def read_current(etcd: Etcd, key: str, prefix: bool) -> tuple[dict[str, KV], int]:
    """The key(s) a watch covers, now: (key -> KV, the read's revision)."""
    if prefix:
        resp = etcd.range_response(key, utils.prefix_range_end(utils.to_bytes(key)))
    else:
        resp = etcd.range_response(key)
    current = {kv.key.decode(): KV(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.lease)
               for kv in resp.kvs}
    return current, resp.header.revision


def stream_error(exc: Exception) -> EtcdError:
    """Why a watch stream broke, in lease.errors terms."""
    if isinstance(exc, EtcdError):
        return exc
    return map_error(exc) if isinstance(exc, grpc.RpcError) else EtcdUnavailable(str(exc))


def read_stream(call, handle: Callable, last_heard: list, liveness_timeout: float,
                stopped: Callable[[], bool]) -> None:
    """Hand each response of a Watch stream to handle until the stream
    breaks, then raise why (EtcdUnavailable when etcd ended it or stayed
    silent, see silent_too_long); return quietly once stopped."""
    try:
        for response in call:
            last_heard[0] = time.monotonic()
            handle(response)
        raise EtcdUnavailable("etcd closed the watch stream")
    except grpc.RpcError as exc:
        if stopped():
            return
        if exc.code() == grpc.StatusCode.CANCELLED and last_heard[0] < 0:
            raise EtcdUnavailable(f"etcd sent nothing on the watch for {liveness_timeout:g} s") from exc
        raise


def silent_too_long(last_heard: list, liveness_timeout: float) -> bool:
    """True when nothing came for liveness_timeout (the request side then
    cancels the call); marks last_heard so that read_stream says why."""
    if time.monotonic() - last_heard[0] > liveness_timeout:
        last_heard[0] = -1.0
        return True
    return False


class _Link:
    """What the watch streams on one channel last heard from etcd, and when one of them
    last asked for progress (monotonic seconds)."""

    __slots__ = ("heard", "asked", "_lock", "__weakref__")

    def __init__(self) -> None:
        self.heard = self.asked = float("-inf")
        self._lock = threading.Lock()

    def ask(self, now: float, quiet: float) -> bool:
        """True (and noted) when this watch should ask for progress: nothing was heard on
        the channel, nor asked by another watch, within `quiet` s."""
        with self._lock:
            if now - max(self.heard, self.asked) < quiet:
                return False
            self.asked = now
            return True


_links: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # grpc channel -> _Link
_links_lock = threading.Lock()


def link_of(channel) -> _Link:
    with _links_lock:
        link = _links.get(channel)
        if link is None:
            link = _links[channel] = _Link()
        return link


class _StreamDead(Exception):
    """Internal: the stream must be re-opened (reason in the message)."""


class _Compacted(Exception):
    pass


class Watcher:
    """Deliver every change of `key` (or of keys under it, prefix=True) from
    start_revision (None: from now) until stop(). Callbacks run on the
    watcher's thread; an exception in one is logged and the watch goes on."""

    def __init__(self, etcd: Etcd, key: str, prefix: bool = False, start_revision: int | None = None,
                 on_events: Callable[[list[WatchEvent]], None] | None = None,
                 on_reset: Callable[[dict[str, KV], int], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None,
                 progress_interval: float = 0.5, liveness_timeout: float | None = None,
                 max_backoff: float = 1.0):
        self.etcd = etcd
        self.key = key
        self.prefix = prefix
        self.on_events = on_events
        self.on_reset = on_reset
        self.on_error = on_error
        self.progress_interval = progress_interval
        self.liveness_timeout = liveness_timeout or max(2.0, etcd.config.timeout)
        self.max_backoff = max_backoff
        # Last revision whose events (for our key range) have all been delivered.
        self.last_revision: int | None = None if start_revision is None else start_revision - 1
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._call = None
        self._call_lock = threading.Lock()
        # Only kept when on_reset is None, so that a re-sync after compaction can
        # synthesize the events it missed (pass on_reset to get the exact state).
        self._delivered = Delivered(key, prefix)
        self._backoff = _FIRST_BACKOFF

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Watcher":
        thread = threading.Thread(target=self._run, name=f"watch {self.key}", daemon=True)
        thread.start()
        # Set once started: stop() from another thread joins only a started thread (joining
        # one not yet started raises). A stop() before this line finds no thread to join;
        # the thread sees _stop set and ends by itself.
        self._thread = thread
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and join the thread. Never raises."""
        self._stop.set()
        self._cancel_call()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.connected.clear()

    def __enter__(self) -> "Watcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        need_reset = False
        while not self._stop.is_set():
            try:
                if need_reset:
                    self._resync()
                    need_reset = False
                self._stream_once()
            except _Compacted as exc:
                log.info("watch %s: %s; re-reading current state", self.key, exc)
                self.connected.clear()
                need_reset = True
                continue
            except Exception as exc:  # noqa: BLE001 - every failure is reported and retried
                if self._stop.is_set():
                    break
                self.connected.clear()
                err = stream_error(exc)
                log.warning("watch %s: %s; retrying from revision %s", self.key, err,
                            None if self.last_revision is None else self.last_revision + 1)
                fail_over(self.etcd)
                self._report_error(err)
                self._stop.wait(self._backoff * (0.5 + random.random()))
                self._backoff = min(self.max_backoff, self._backoff * 2)
        self.connected.clear()

    def _stream_once(self) -> None:
        """Open one stream, deliver until it breaks. Raises on any break."""
        create = create_request(self.key, self.prefix, self.last_revision)
        outbox: queue.Queue = queue.Queue()
        last_heard = [time.monotonic()]
        channel = usable_channel(self.etcd)
        link = link_of(channel)
        stub = etcdrpc.WatchStub(channel)
        call = stub.Watch(self._requests(create, outbox, last_heard, link),
                          **with_require_leader(self.etcd.call_kwargs))
        with self._call_lock:
            self._call = call
        if self._stop.is_set():
            call.cancel()

        def handle(response) -> None:
            link.heard = time.monotonic()   # the link is alive
            self._handle(response)

        try:
            read_stream(call, handle, last_heard, self.liveness_timeout, self._stop.is_set)
        finally:
            outbox.put(None)
            with self._call_lock:
                self._call = None
            call.cancel()

    def _requests(self, create: etcdrpc.WatchRequest, outbox: queue.Queue, last_heard: list,
                  link: _Link) -> Iterator:
        """The request side: create, then every progress_interval a progress request
        unless the channel heard from etcd, or another watch on it asked, within most of
        that interval (_Link); cancels the call when the channel stays silent too long."""
        yield create
        while True:
            try:
                if outbox.get(timeout=self.progress_interval) is None:
                    return
            except queue.Empty:
                pass
            if self._stop.is_set():
                return
            if last_heard[0] < link.heard:
                last_heard[0] = link.heard   # another stream on the channel heard etcd
            if silent_too_long(last_heard, self.liveness_timeout):
                self._cancel_call()
                return
            # 0.9: a watch alone on its channel asks at each of its own ticks (>= one interval apart).
            if link.ask(time.monotonic(), 0.9 * self.progress_interval):
                yield etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest())

    def _cancel_call(self) -> None:
        with self._call_lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _handle(self, response) -> None:
        if response.compact_revision > 0:
            raise _Compacted(f"revision {self.last_revision} was compacted (now {response.compact_revision})")
        if response.canceled:
            raise _StreamDead(f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}")
        if response.created:
            self.connected.set()
            self._backoff = _FIRST_BACKOFF  # the next outage starts with a quick retry
            if self.last_revision is None:
                # Watching "from now": everything up to here is history.
                self.last_revision = response.header.revision
            return
        if response.events:
            events = [self._event(e) for e in response.events]
            self.last_revision = max(self.last_revision or 0, max(e.mod_revision for e in events))
            self._deliver(events)
        # Otherwise a progress notification: it proves the link is alive. Its
        # revision is not trusted as "all delivered" (etcd < 3.5.8 could send it
        # ahead of pending events), so last_revision moves with events only.

    @staticmethod
    def _event(raw) -> WatchEvent:
        kv = raw.kv
        if raw.type == _DELETE:
            return WatchEvent("delete", kv.key.decode(), None, kv.create_revision, kv.mod_revision, kv.lease)
        return WatchEvent("put", kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.lease)

    def _deliver(self, events: list[WatchEvent]) -> None:
        if self.on_reset is None:
            self._delivered.note(events)
        if self.on_events is None:
            return
        try:
            self.on_events(events)
        except Exception:  # noqa: BLE001 - a bad callback must not end the watch
            log.exception("watch %s: on_events raised", self.key)

    def _resync(self) -> None:
        """After compaction: read the current state, hand it over, resume after it."""
        current, revision = read_current(self.etcd, self.key, self.prefix)
        if self.on_reset is not None:
            try:
                self.on_reset(current, revision)
            except Exception:  # noqa: BLE001
                log.exception("watch %s: on_reset raised", self.key)
        else:
            events = self._delivered.missed(current, self.last_revision or 0, revision)
            if events:
                self._deliver(events)
        self.last_revision = revision

    def _report_error(self, exc: Exception) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(exc)
        except Exception:  # noqa: BLE001
            log.exception("watch %s: on_error raised", self.key)
