"""The agent's view of the leader key: who leads, at which gRPC address, in which epoch.

`LeaderFollower` watches the key (lease.watcher.Watcher, which survives etcd
restarts and compaction) and can also re-read it on demand, when a
coordinator says "not leader" and the watch may be lagging. Both sources
carry an etcd revision; the view only ever moves forward in revisions, so a
late watch event can never undo a fresher read.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from cluster.records import LeaderRecord
from lease.client import Etcd
from lease.watcher import WatchEvent, Watcher

log = logging.getLogger(__name__)


def followable(value: bytes | None, create_revision: int, lease_id: int = 0) -> LeaderRecord | None:
    """The leader record an agent can follow: None for a missing key, and also
    None (logged) for a value an agent cannot use, e.g. without a gRPC
    address: then there is no leader to follow."""
    record = LeaderRecord.parse(value, create_revision, lease_id)
    if record is not None and not record.grpc:
        log.error("the leader key names %s but no gRPC address to connect to", record.name)
        return None
    return record


class LeaderFollower:
    """Calls on_change(LeaderRecord | None) whenever the leader changes.

    `start()` reads the key once (raising EtcdUnavailable when etcd cannot be
    reached; call it again later) and then watches it; on_change runs on the
    caller's thread for the first read and on the watcher's thread after that.
    """

    def __init__(self, etcd: Etcd, key: str, on_change: Callable[[LeaderRecord | None], None],
                 watch: Callable[..., Watcher] | None = None):
        """watch(key, start_revision=, on_events=): makes the (not started) watch;
        default a Watcher. The bench pool passes a WatchMux's."""
        self.etcd = etcd
        self.key = key
        self.on_change = on_change
        self._make_watch = watch or (lambda key, **kw: Watcher(self.etcd, key, **kw))
        self._lock = threading.Lock()
        self._view: LeaderRecord | None = None
        self._revision = 0
        self._watcher: Watcher | None = None

    @property
    def current(self) -> LeaderRecord | None:
        with self._lock:
            return self._view

    def start(self) -> "LeaderFollower":
        revision = self.reread()
        self._watcher = self._make_watch(self.key, start_revision=revision + 1, on_events=self._on_events).start()
        return self

    def reread(self) -> int:
        """Read the key now and apply it; returns the read's revision. Raises EtcdError."""
        resp = self.etcd.range_response(self.key)
        kv = resp.kvs[0] if resp.kvs else None
        view = followable(kv.value, kv.create_revision, kv.lease) if kv else None
        self._apply(view, resp.header.revision)
        return resp.header.revision

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _on_events(self, events: list[WatchEvent]) -> None:
        for e in events:
            view = followable(e.value, e.create_revision, e.lease) if e.type == "put" else None
            self._apply(view, e.mod_revision)

    def _apply(self, view: LeaderRecord | None, revision: int) -> None:
        with self._lock:
            if revision <= self._revision:
                return  # older than what we already know
            self._revision = revision
            changed = view != self._view
            self._view = view
        if changed:
            try:
                self.on_change(view)
            except Exception:  # noqa: BLE001 - the follower must keep following
                log.exception("leader change handler raised")
