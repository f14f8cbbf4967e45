"""What bench/failover.py measures: the leader key, agents/ and tasks/ as one etcd
client's watches see them, the pool's welcomed streams, and the final audit that
every submitted task ended exactly once."""
from __future__ import annotations

import bisect
import threading
import time
from collections import Counter

from cli.local import LocalCluster
from cluster.keys import Keys, decode
from lease.watcher import Watcher


class Links:
    """Which agent is linked to which (coordinator, epoch); when all of them first were on one."""

    def __init__(self, n_agents: int):
        self.n_agents = n_agents
        self.of: dict[str, tuple] = {}            # agent -> (coordinator, epoch)
        self.counts: Counter = Counter()          # (coordinator, epoch) -> agents
        self.all_on: dict[tuple, float] = {}      # (coordinator, epoch) -> first time all were on it
        self.arrivals: dict[tuple, list[float]] = {}  # (coordinator, epoch) -> when each agent moved there

    def set(self, agent: str, link: tuple | None, now: float) -> None:
        old = self.of.pop(agent, None)
        if old is not None:
            self.counts[old] -= 1
        if link is None or link[0] is None:
            return
        self.of[agent] = link
        self.counts[link] += 1
        self.arrivals.setdefault(link, []).append(now)
        if self.counts[link] >= self.n_agents and link not in self.all_on:
            self.all_on[link] = now


class Monitor:
    """Watches the leader key, agents/ and tasks/ and time-stamps what matters.

    Callbacks run on the watchers' threads and only record; the benchmark's
    thread waits on `changed`."""

    def __init__(self, etcd, keys: Keys, n_agents: int, start_revision: int):
        self.etcd, self.keys, self.n_agents = etcd, keys, n_agents
        self.changed = threading.Condition()
        self.leader: tuple[str, int] | None = None         # (name, epoch)
        self.leader_log: list[tuple[float, str, str | None, int]] = []  # (t, put|delete, name, epoch)
        self.keys_view = Links(n_agents)     # from agents/<name> in etcd
        self.streams = Links(n_agents)       # from the pool's welcomed streams (on_link)
        self.standby: dict[str, str | None] = {}  # agent -> coordinator it holds a standby stream to
        self.running_revs: list[int] = []                    # revisions of "running" task puts, ascending
        self.running_times: list[float] = []
        self.finals: Counter = Counter()                     # task key -> final records written
        self.errors: list[str] = []
        raw, meta = etcd.get(keys.leader)
        if raw is not None:
            self.leader = (decode(raw)["name"], meta.create_revision)
        now = time.monotonic()
        for value, meta in etcd.get_prefix(keys.agents):
            self._set_link(Keys.name_of(meta.key, keys.agents), decode(value), now)
        rev = etcd.revision()
        self.watchers = [
            Watcher(etcd, keys.leader, start_revision=rev + 1, on_events=self._on_leader, on_error=self._on_error),
            Watcher(etcd, keys.agents, prefix=True, start_revision=rev + 1, on_events=self._on_agents,
                    on_error=self._on_error),
            Watcher(etcd, keys.tasks, prefix=True, start_revision=start_revision + 1, on_events=self._on_tasks,
                    on_error=self._on_error),
        ]
        for w in self.watchers:
            w.start()

    def stop(self) -> None:
        for w in self.watchers:
            w.stop()

    # -- callbacks (watcher threads) ------------------------------------------
    def _on_error(self, exc: Exception) -> None:
        self.errors.append(f"{time.strftime('%H:%M:%S')} watch error: {exc}")

    def _on_leader(self, events) -> None:
        now = time.monotonic()
        with self.changed:
            for e in events:
                if e.type == "put":
                    name = (decode(e.value) or {}).get("name")
                    self.leader = (name, e.create_revision)
                    self.leader_log.append((now, "put", name, e.create_revision))
                else:
                    self.leader = None
                    self.leader_log.append((now, "delete", None, e.mod_revision))
            self.changed.notify_all()

    def _set_link(self, agent: str, record: dict | None, now: float) -> None:
        link = (record.get("coordinator"), record.get("epoch")) if record else None
        self.keys_view.set(agent, link, now)

    def on_stream(self, t: float, agent: str, coordinator: str | None, epoch: int | None,
                  standby: str | None = None) -> None:
        with self.changed:
            self.streams.set(agent, (coordinator, epoch), t)
            self.standby[agent] = standby
            self.changed.notify_all()

    def _on_agents(self, events) -> None:
        now = time.monotonic()
        with self.changed:
            for e in events:
                self._set_link(Keys.name_of(e.key, self.keys.agents),
                               decode(e.value) if e.type == "put" else None, now)
            self.changed.notify_all()

    def _on_tasks(self, events) -> None:
        now = time.monotonic()
        with self.changed:
            for e in events:
                if e.type != "put":
                    continue
                value = decode(e.value) or {}
                state = value.get("state")
                if state == "running":
                    self.running_revs.append(e.mod_revision)
                    self.running_times.append(now)
                elif state in ("done", "failed") and value.get("result"):
                    self.finals[e.key] += 1
            self.changed.notify_all()

    # -- queries (benchmark thread) ------------------------------------------
    def wait(self, predicate, timeout: float, what: str):
        with self.changed:
            value = self.changed.wait_for(predicate, timeout)
        if not value:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        return value

    def leader_put_after(self, index: int, name: str):
        """The first leader put naming `name` at or after leader_log[index]: (t, epoch) or None."""
        for t, kind, who, epoch in self.leader_log[index:]:
            if kind == "put" and who == name:
                return t, epoch
        return None

    def leader_delete_after(self, index: int):
        for t, kind, _, _ in self.leader_log[index:]:
            if kind == "delete":
                return t
        return None

    def first_running_after(self, revision: int):
        i = bisect.bisect_right(self.running_revs, revision)
        return self.running_times[i] if i < len(self.running_times) else None

    def all_agents_on(self, name: str, epoch: int):
        """When every agents/<name> first named (name, epoch)."""
        return self.keys_view.all_on.get((name, epoch))

    def all_standing_by_for(self, name: str) -> bool:
        """Every pool agent holds a standby stream to `name` (the successor its leader named)."""
        return (len(self.standby) >= self.n_agents
                and all(standby == name for standby in self.standby.values()))

    def all_streams_on(self, name: str, epoch: int):
        """When every pool agent's stream was first welcomed by (name, epoch)."""
        return self.streams.all_on.get((name, epoch))


def audit(cluster: LocalCluster, monitor: Monitor, timeout: float) -> dict:
    """Every submitted task ends with exactly one final record (see the module doc)."""
    etcd, keys = cluster.etcd(), cluster.keys
    expected: set[str] = set()
    for value, _ in etcd.get_prefix(keys.builds):
        spec = decode(value)
        expected.update(keys.task(spec["id"], str(t["id"])) for t in spec.get("tasks") or [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with monitor.changed:
            if expected <= set(monitor.finals):
                break
            monitor.changed.wait(1.0)
    with monitor.changed:
        finals = Counter(monitor.finals)
    lost = sorted(k for k in expected if finals[k] == 0)
    twice = sorted(k for k in expected if finals[k] > 1)
    unknown = sorted(k for k in finals if k not in expected)
    return {"tasks": len(expected), "exactly_once": sum(1 for k in expected if finals[k] == 1),
            "lost": len(lost), "twice": len(twice), "unknown": len(unknown),
            "examples": (lost[:3] + twice[:3] + unknown[:3])}
