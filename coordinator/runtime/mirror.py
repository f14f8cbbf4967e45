"""A warm copy of a new leader's starting point, kept while not leading.

A takeover used to begin by reading the starting point from etcd
(loading.read_starting_point): under the load of 200 agents dialling the new
leader at that very moment, that read took 300-450 ms of a 2-core machine
(bench/failover.py). A coordinator that may lead next (the primary while it
does not lead, the selected backup, a switchover's target) keeps a
`Mirror` instead: one read, then a watch of the cluster prefix applying the
same selection as read_starting_point (agents, agent-config, build-status,
build-cancel, settings, builds/ and the task records of unfinished builds; the values of
finished builds are dropped as soon as their build-status says so).

`snapshot(at_least)` returns (key -> KV, revision) exactly as
read_starting_point would have read it at that revision, once the mirror
has applied every event up to `at_least` (the new leader passes its epoch:
the old leader's writes all come before it), or None if it has not caught
up within the timeout; the caller then reads etcd as before.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, NamedTuple

from cluster.keys import Keys
from coordinator.runtime.loading import decoded, read_starting_point
from cluster.records import BUILD_ENDED
from lease.errors import EtcdError
from lease.watcher import KV, WatchEvent, Watcher

log = logging.getLogger(__name__)


class Mirror:
    """`Mirror(etcd, keys).start()` (returns at once; the first read runs on
    its own thread), `snapshot(at_least, timeout)`, `stop()`."""

    def __init__(self, etcd, keys: Keys, watch: Callable[..., Watcher] = Watcher):
        self.etcd, self.keys = etcd, keys
        self._watch = watch
        self._changed = threading.Condition()
        self._other: dict[str, Any] = {}                   # every kept key but task records
        self._tasks: dict[str, dict[str, Any]] = {}        # build id -> task key -> KV
        self._finished: set[str] = set()
        self.revision = 0                                  # every event up to here is applied
        self.failed: Exception | None = None               # the first read failed: start again later
        self._watcher: Watcher | None = None
        self._stopped = threading.Event()
        self._filling = threading.Event()   # the first read has begun (start's `after` is over)

    # -- lifecycle --------------------------------------------------------------------
    def start(self, after: float = 0.0) -> "Mirror":
        """Fill (after `after` seconds) and follow, on its own thread."""
        if after <= 0:
            self._filling.set()
        threading.Thread(target=self._fill_and_watch, args=(after,), name="starting-point mirror",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        with self._changed:
            self._changed.notify_all()

    @property
    def alive(self) -> bool:
        return self.failed is None and not self._stopped.is_set()

    def snapshot(self, at_least: int, timeout: float) -> tuple[dict[str, Any], int] | None:
        """A copy of the starting point at revision >= at_least, or None (at
        once if the mirror has not begun its first read: etcd is faster then)."""
        if not self._filling.is_set():
            return None
        with self._changed:
            if not self._changed.wait_for(lambda: self.revision >= at_least or not self.alive, timeout):
                return None
            if not self.alive:
                return None
            kvs = dict(self._other)
            for records in self._tasks.values():
                kvs.update(records)
            return kvs, self.revision

    # -- filling and following ---------------------------------------------------------
    def _fill_and_watch(self, after: float) -> None:
        if after > 0:
            if self._stopped.wait(after):
                return
            self._filling.set()
        try:
            kvs, revision = read_starting_point(self.etcd, self.keys)
        except EtcdError as exc:
            self.failed = exc
            log.info("could not read the starting point to keep it warm (%s); will try again", exc)
            return
        with self._changed:
            self._reset(kvs, revision)
        if self._stopped.is_set():
            return
        watcher = self._watch(self.etcd, self.keys.root, prefix=True, start_revision=revision + 1,
                              on_events=self._apply, on_reset=self._reset_after_compaction)
        watcher.start()
        self._watcher = watcher
        # stop() may run between the check above and the assignment (then it
        # saw no watcher) or after it (then it took the watcher and set None):
        # stopping our own reference covers both, and Watcher.stop is idempotent.
        if self._stopped.is_set():
            watcher.stop()

    def _reset(self, kvs: dict[str, Any], revision: int) -> None:
        self._other.clear()
        self._tasks.clear()
        self._finished.clear()
        # Statuses first, so that a finished build's spec and records are never kept.
        for key in sorted(kvs, key=lambda k: not k.startswith(self.keys.build_status)):
            self._put(key, kvs[key])
        self.revision = revision
        self._changed.notify_all()

    def _reset_after_compaction(self, kvs: dict[str, KV], revision: int) -> None:
        with self._changed:
            self._reset(kvs, revision)

    def stop_applying(self) -> None:
        """Ignore events from now on (stop() also joins the watch, which may take a moment)."""
        self._stopped.set()

    def _apply(self, events: list[WatchEvent]) -> None:
        if self._stopped.is_set():
            return
        with self._changed:
            for e in events:
                if e.type == "put":
                    self._put(e.key, e)
                else:
                    self._delete(e.key)
            self.revision = max(self.revision, max(e.mod_revision for e in events))
            self._changed.notify_all()

    def _put(self, key: str, kv: Any) -> None:
        k = self.keys
        if key.startswith(k.tasks):
            build_id = Keys.name_of(key, k.tasks).partition("/")[0]
            if build_id not in self._finished:
                self._tasks.setdefault(build_id, {})[key] = _decoded(key, kv)
        elif key.startswith(k.build_status):
            kv = self._other[key] = _decoded(key, kv)
            build_id = Keys.name_of(key, k.build_status)
            if (kv.decoded or {}).get("state") in BUILD_ENDED and build_id not in self._finished:
                self._finished.add(build_id)
                self._tasks.pop(build_id, None)
                spec = self._other.get(k.build(build_id))
                if spec is not None:
                    self._other[k.build(build_id)] = _keys_only(spec)
        elif key.startswith(k.builds):
            build_id = Keys.name_of(key, k.builds)
            self._other[key] = _keys_only(kv) if build_id in self._finished else _decoded(key, kv)
        elif key.startswith(k.agents):
            self._other[key] = _decoded(key, kv)
        elif key.startswith(k.agent_config) or key.startswith(k.build_cancels) or key == k.settings:
            self._other[key] = kv

    def _delete(self, key: str) -> None:
        if key.startswith(self.keys.tasks):
            build_id = Keys.name_of(key, self.keys.tasks).partition("/")[0]
            self._tasks.get(build_id, {}).pop(key, None)
        else:
            self._other.pop(key, None)


class _Decoded(NamedTuple):
    """A kept key-value with its JSON value decoded as it arrived, so that a
    takeover (loading.read_snapshot) does not decode thousands of records."""
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    decoded: Any


def _decoded(key: str, kv: Any) -> _Decoded:
    return _Decoded(key, kv.value, kv.create_revision, kv.mod_revision, decoded(kv))


def _keys_only(kv: Any) -> KV:
    """What read_starting_point keeps of a finished build's spec: its key and revisions."""
    return KV(kv.key if isinstance(kv.key, str) else kv.key.decode(), b"", kv.create_revision, kv.mod_revision, 0)
