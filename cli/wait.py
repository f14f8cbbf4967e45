"""`baton build submit --wait`: follow a build to its end, through failovers and handbacks.

The coordinator we submitted to may die while we wait; that is the event
Baton exists for (docs/design.md section 1), so waiting must not end there.
Each poll asks etcd who leads now and tries the leader's web address first,
then every other registered coordinator (reads answer on any of them): a
coordinator that cannot be reached, or answers 502/503/504, is skipped, and
when none answers (the gap of a failover, before the backup's lease takes
the leader key) the next poll tries again, until the build ends or the
timeout passes. Refusals that waiting cannot cure (401, 403, 404) end it.

On a terminal (stderr is a tty) it shows progress as it changes: tasks
done/running/queued, the coordinator it reads from, and each failed task's
output tail once. Piped, it says nothing until the result.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from cli.api_client import ApiClient, ApiError
from cluster.keys import Keys
from cluster.records import BUILD_ENDED, CoordinatorRecord, LeaderRecord
from lease.errors import ConfigError, EtcdError

TRANSIENT = (0, 502, 503, 504)  # unreachable, or a coordinator that cannot answer right now
POLL_INTERVAL = 0.5
ENDED = BUILD_ENDED  # done, failed, cancelled


def web_urls(etcd, keys: Keys) -> list[str]:
    """Where to read: the leader's web address, then the primaries', then the others'."""
    urls: list[str] = []
    raw, meta = etcd.get(keys.leader)
    leader = LeaderRecord.parse(raw, meta.create_revision) if raw else None
    if leader and leader.web:
        urls.append(leader.web)
    records = [CoordinatorRecord.parse(v, Keys.name_of(m.key, keys.coordinators))
               for v, m in etcd.get_prefix(keys.coordinators)]
    for c in sorted((c for c in records if c is not None), key=lambda c: c.role != "primary"):
        if c.web and c.web not in urls:
            urls.append(c.web)
    return urls


class Progress:
    """What a person at a terminal sees while a build runs (nothing when `out` is None)."""

    def __init__(self, build_id: str, out: TextIO | None):
        self.build_id = build_id
        self.out = out
        self._last = ""
        self._failed_shown: set[str] = set()
        self._source = ""

    def show(self, build: dict, source: str) -> None:
        if self.out is None:
            return
        counts = build.get("counts") or {}
        line = (f"{self.build_id}: {counts.get('done', 0)} done, {counts.get('running', 0)} running, "
                f"{counts.get('queued', 0)} queued, {counts.get('failed', 0)} failed")
        if source != self._source:
            self._say(f"reading from {source}")
            self._source = source
        if line != self._last:
            self._say(line)
            self._last = line
        for task in build.get("tasks") or []:
            if task.get("state") == "failed" and task.get("id") not in self._failed_shown:
                self._failed_shown.add(task.get("id"))
                self._say(f"task {task.get('id')} failed (exit {task.get('exit_code')}, agent "
                          f"{task.get('agent') or '-'})" + (f": {task['error']}" if task.get("error") else ""))
                tail = (task.get("output_tail") or "").rstrip("\n")
                for text in tail.splitlines()[-20:]:
                    self._say(f"  | {text}")

    def unreachable(self, why: str) -> None:
        if self.out is not None and why != self._source:
            self._say(f"no coordinator answers ({why}); still waiting")
            self._source = why

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class EtcdDirectory:
    """web_urls() from one etcd connection, made again after etcd failed to answer."""

    def __init__(self, connect: Callable[[], object], keys: Keys):
        self.connect = connect
        self.keys = keys
        self.etcd = None

    def __call__(self) -> list[str]:
        try:
            if self.etcd is None:
                self.etcd = self.connect()
            return web_urls(self.etcd, self.keys)
        except EtcdError:
            self.close()
            raise

    def close(self) -> None:
        if self.etcd is not None:
            self.etcd.close()
            self.etcd = None


def follow_build(build_id: str, find_urls: Callable[[], list[str]], client_for: Callable[[str], ApiClient],
                 timeout: float, out: TextIO | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> dict:
    """The build once it has ended (the full document). find_urls() says where to read
    (EtcdDirectory; it may raise EtcdError). Raises ConfigError when the build has not
    ended within `timeout` s, ApiError for a refusal waiting cannot cure."""
    progress = Progress(build_id, out if out is not None else (sys.stderr if sys.stderr.isatty() else None))
    deadline = clock() + timeout
    while True:
        try:
            urls = find_urls()
            why = "no coordinator is registered"
        except EtcdError as exc:
            urls, why = [], f"etcd: {exc}"
        for url in urls:
            client = client_for(url)
            try:
                # With progress, each poll reads the counts and the failed tasks only (a build
                # may have thousands of tasks); the whole build once it has ended.
                build = client.build(build_id) if progress.out is None else \
                    client.request("GET", f"/api/v1/builds/{build_id}?state=failed&limit=1000")
                if build["state"] in ENDED and progress.out is not None:
                    build = client.build(build_id)
            except ApiError as exc:
                if exc.status in TRANSIENT:
                    why = str(exc)
                    continue
                raise
            progress.show(build, url)
            if build["state"] in ENDED:
                return build
            break
        else:
            progress.unreachable(why)
        if clock() > deadline:
            raise ConfigError(f"build {build_id} did not end within {timeout:g} s")
        sleep(POLL_INTERVAL)
