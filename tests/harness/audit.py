"""Audits of what a build left in etcd: every task ended exactly once.

`TaskHistory` replays the etcd history of a build's task keys (a watch from
the revision before the build was submitted) and counts, per task, how many
times a final result was written. Every task of a finished build must have
exactly one. It also collects which coordinator wrote under which epoch, so
a test can check that no two coordinators' fenced writes succeeded under the
same epoch.
"""
from __future__ import annotations

import threading
from collections import Counter, defaultdict

from cluster.keys import Keys, decode
from lease.watcher import Watcher
from tests.harness.wait import wait_until


class TaskHistory:
    def __init__(self, etcd, keys: Keys, build_id: str, since_revision: int):
        self.etcd, self.keys, self.build_id = etcd, keys, build_id
        self.since = since_revision
        self.events: list = []
        self._lock = threading.Lock()

    def collect(self, timeout: float = 20.0) -> "TaskHistory":
        """Replay every write to tasks/<build>/ from since_revision up to now."""
        until = self.etcd.revision()
        seen = {"rev": 0}

        def on_events(events):
            with self._lock:
                self.events.extend(events)
                seen["rev"] = max(seen["rev"], max(e.mod_revision for e in events))

        w = Watcher(self.etcd, self.keys.build_tasks(self.build_id), prefix=True,
                    start_revision=self.since + 1, on_events=on_events)
        w.start()
        try:
            # The last task write is at or before `until`; wait until we have replayed that far.
            last_task_rev = max((m.mod_revision for _, m in self.etcd.get_prefix(self.keys.build_tasks(self.build_id))),
                                default=0)
            wait_until(lambda: seen["rev"] >= min(until, last_task_rev), timeout,
                       message="task history replayed")
        finally:
            w.stop()
        return self

    def final_writes(self) -> Counter:
        """task id -> number of writes that recorded a final result (done or failed)."""
        counts: Counter = Counter()
        for e in self.events:
            if e.type != "put":
                continue
            value = decode(e.value) or {}
            if value.get("state") in ("done", "failed") and value.get("result"):
                counts[Keys.name_of(e.key, self.keys.build_tasks(self.build_id))] += 1
        return counts

    def writers_by_epoch(self) -> dict[int, set[str]]:
        """epoch -> coordinators that wrote task records under it (when records carry them)."""
        out: dict[int, set[str]] = defaultdict(set)
        for e in self.events:
            value = decode(e.value) if e.type == "put" else None
            if value and value.get("epoch") is not None:
                out[int(value["epoch"])].add(value.get("coordinator", "?"))
        return dict(out)
