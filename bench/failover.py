"""How long does a whole cluster take to move to the backup, and back?

    python bench/failover.py [--trials 20] [--agents 200] [--pools 4] [--switchovers 20] [--ttl 2]
                             [--failback-delay 1] [--build-tasks 1000] [--backlog 3000]
                             [--task-seconds 1] [--max-cores-per-build 0] [--tls] [--dir DIR] [--json]

Everything is real and started here (cli.local.LocalCluster): a
single-member etcd, the primary p1 and the selected backup b1 as processes
with their web UIs, and `--agents` pool agents (bench.pool, 1 core each, in
`--pools` child processes). A feeder thread keeps about `--backlog` tasks
queued, in builds of `--build-tasks`, through p1's JSON API, so that there is
always work when a coordinator takes over.

The load, by default, is what a busy farm looks like: every agent runs a task
at every moment (each pretend task takes `--task-seconds`, 1 s; no process is
spawned), about 200 tasks/s, so a move always carries running tasks in the
agents' Hellos. `--task-seconds 0 --max-cores-per-build 4` is the stress
setting earlier runs used: no-op tasks at ~1,100/s, which keep the 2-core
machine ~85 % busy before any handover (the cluster setting
max_cores_per_build keeps that from saturating it outright; the limit is
lifted for the final audit).

Each failover trial SIGKILLs the leading p1 and measures from the kill:
  (a) b1 leads: the leader key is put naming b1 (its create revision is the
      new epoch);
  (b) every agent is connected to b1: every agents/<name> value names b1
      with the new epoch;
  (c) b1 dispatches: the first tasks/<build>/<task> put with state
      "running" after the new epoch's revision.
Then p1 is restarted; b1 hands back after --failback-delay. Timed: from
b1's resign (leader key deleted) to every agent on p1 with p1's new epoch.

Each switchover trial POSTs /api/v1/switchover on the leading p1 and times
request -> every agent on b1 with b1's epoch, then the same from b1 back to
p1 (a planned switchover is not undone by the handback rule), and also
request -> the new leader's first dispatch (as (c), no target).

All times are taken in this process from one etcd client's watches
(lease.watcher.Watcher on the leader key, agents/ and tasks/), so they
include etcd's notification delay (sub-millisecond on loopback).

At the end every build that was submitted (builds/ in etcd) must finish and
each of its tasks must have exactly one final record (done/failed) in the
history of tasks/ since the start revision; the counts of lost and
duplicated tasks are printed.

Targets (issue "Backup coordinators", Performance): p99 of (b) <= 2.8 s
(1.4 x ttl for ttl 2); switchover and handback p99 <= 300 ms. Exits 1 if one
is missed or a task was lost or recorded twice. Stops everything it started,
also on Ctrl-C or an error (process logs stay in --dir, a temporary
directory by default, removed unless --dir is given or the run fails).
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.api_client import ApiError  # noqa: E402
from cluster.keys import Keys, decode  # noqa: E402
from cli.local import LocalCluster, Proc  # noqa: E402
from lease.watcher import Watcher  # noqa: E402

TARGET_AGENTS_P99 = 2.8      # s, failover (b)
TARGET_PLANNED_P99 = 0.300   # s, switchover / handback

_POOL_CHILD = r"""
import logging, signal, sys, threading
from bench.pool import AgentPool
from lease.client import EtcdConfig
urls, ca, cluster, count, cores, token, mode, prefix, task_seconds = sys.argv[1:10]
logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
stop = threading.Event()
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda *_: stop.set())
pool = AgentPool(EtcdConfig.from_urls(urls, ca_cert=ca or None), cluster, int(count), int(cores),
                 agent_token=token, grpc_ca=ca or None, name_prefix=prefix,
                 task_seconds=float(task_seconds)).start()
print("pool started", file=sys.stderr, flush=True)
if mode == "report":
    # Which agents' streams are welcomed, by whom, under which epoch, and to whom each
    # holds a standby stream (the successor its leader named): looked at for the agents
    # whose wake-up was set (a link welcomed or lost) as it happens, for all every 100 ms
    # (standby streams). Polling all agents every 5 ms took a fifth of the pool's CPU.
    # CLOCK_MONOTONIC is one clock for the whole machine, so the parent can compare.
    import time
    last, changed, woke, mark_due, lock = {}, set(), threading.Event(), pool._mark_due, threading.Lock()
    def on_due(index):
        mark_due(index)
        with lock:
            changed.add(index)
        woke.set()
    pool._mark_due = on_due
    next_sweep = 0.0
    while not stop.is_set():
        woke.wait(max(0.0, next_sweep - time.monotonic()))
        woke.clear()
        with lock:
            due, changed = changed, set()
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + 0.1
            agents = pool.agents
        else:
            agents = [pool.agents[i] for i in sorted(due)]
        lines = []
        for agent in agents:
            link, standby = agent._link, agent._standby
            state = ((link.leader.name, link.epoch) if link is not None and link.welcomed else ("-", "-"),
                     standby.leader.name if standby is not None and standby.alive and standby.streams_opened
                     else "-")
            if last.get(agent.config.name) != state:
                last[agent.config.name] = state
                lines.append(f"{time.monotonic():.6f} {agent.config.name} {state[0][0]} {state[0][1]} {state[1]}")
        if lines:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
else:
    stop.wait()
pool.stop()
"""


class PoolProcess:
    """bench.pool.AgentPool in a child process (its own interpreter lock), with
    the cluster's agent token and, with TLS, its CA for etcd and gRPC.
    (`python -m bench.pool` has no CA options, hence this small launcher.)
    The process is a cli.local.Proc: `stop()`, `log_tail()`, `alive`."""

    def __init__(self, cluster: LocalCluster, count: int, cores: int = 1, on_link=None,
                 prefix: str = "bench-agent-", task_seconds: float = 0.0):
        """on_link(t, agent, coordinator, epoch, standby), if given, is called (on a reader thread)
        whenever an agent's stream is welcomed or lost (coordinator and epoch None) or its standby
        stream changes (standby: the coordinator it stands by for, or None); t on time.monotonic()."""
        argv = [sys.executable, "-c", _POOL_CHILD, cluster.etcd_urls, cluster.ca or "", cluster.cluster,
                str(count), str(cores), cluster.agent_token, "report" if on_link else "quiet", prefix,
                str(task_seconds)]
        root = str(Path(__file__).resolve().parent.parent)
        self.proc = Proc(f"pool-{prefix.strip('-')}", argv, cluster.dir / "logs" / f"pool-{prefix.strip('-')}.log",
                         env={"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")})
        self.proc.start(pipe_stdout=bool(on_link))
        self.log_tail = self.proc.log_tail
        if on_link:
            threading.Thread(target=self._read_links, args=(on_link,), name="pool links", daemon=True).start()

    def _read_links(self, on_link) -> None:
        for line in self.proc.popen.stdout:
            t, name, coordinator, epoch, standby = line.decode().split()
            on_link(float(t), name, None if coordinator == "-" else coordinator,
                    None if epoch == "-" else int(epoch), None if standby == "-" else standby)

    @property
    def alive(self) -> bool:
        return self.proc.alive

    def stop(self, timeout: float = 20) -> None:
        self.proc.stop(timeout)  # 200 agents take a while to close their streams and revoke the lease


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (with 20 samples: the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(0.99 * len(ordered) + 0.5)) - 1))]


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


class Feeder(threading.Thread):
    """Keeps about `backlog` tasks not yet finished by submitting builds of
    `size` no-op tasks through p1's API while p1 leads (the only coordinator
    that accepts builds)."""

    def __init__(self, cluster: LocalCluster, monitor: Monitor, size: int, backlog: int):
        super().__init__(name="feeder", daemon=True)
        self.cluster, self.monitor, self.size, self.backlog = cluster, monitor, size, backlog
        self.submitted = 0
        self.builds = 0
        self.refusals = 0
        self._halt = threading.Event()

    def outstanding(self) -> int:
        return self.submitted - len(self.monitor.finals)

    def run(self) -> None:
        api = self.cluster.api("p1")
        while not self._halt.is_set():
            leader = self.monitor.leader
            if leader and leader[0] == "p1" and self.outstanding() < self.backlog:
                n = self.builds
                spec = {"name": f"bench{n}", "tasks": [{"id": f"t{i:05d}", "cmd": "true"} for i in range(self.size)]}
                try:
                    api.request("POST", "/api/v1/builds", spec)
                    self.builds += 1
                    self.submitted += self.size
                    continue
                except ApiError:
                    self.refusals += 1  # p1 does not lead (any more) or is starting; try again later
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(30)


def coordinator_ready(cluster: LocalCluster, name: str) -> bool:
    raw, _ = cluster.etcd().get(cluster.keys.coordinator(name))
    return raw is not None and bool((decode(raw) or {}).get("ready"))


def wait_steady(cluster: LocalCluster, monitor: Monitor, leader: str, timeout: float = 60) -> int:
    """leader leads, every agent is on it, both coordinators are registered and ready, and every
    agent holds a standby stream to the other one (the leader names it as its successor once the
    agents have moved; a planned handover before that works, over new streams); returns the epoch."""
    deadline = time.monotonic() + timeout
    monitor.wait(lambda: monitor.leader and monitor.leader[0] == leader, timeout, f"{leader} to lead")
    epoch = monitor.leader[1]
    monitor.wait(lambda: monitor.all_agents_on(leader, epoch), max(1.0, deadline - time.monotonic()),
                 f"all agents on {leader}")
    while not (coordinator_ready(cluster, "p1") and coordinator_ready(cluster, "b1")):
        if time.monotonic() > deadline:
            raise TimeoutError("p1 and b1 to be registered and ready")
        time.sleep(0.05)
    other = "b1" if leader == "p1" else "p1"
    monitor.wait(lambda: monitor.all_standing_by_for(other), max(1.0, deadline - time.monotonic()),
                 f"every agent to stand by for {other}")
    return epoch


def agent_spread(monitor: Monitor, link: tuple) -> tuple[float, float]:
    """When the first agent key, and the median one, moved to link (for diagnosis)."""
    with monitor.changed:
        times = sorted(monitor.keys_view.arrivals.get(link, []))
    return times[0], statistics.median(times)


def wait_for_queued_work(monitor: Monitor, feeder: Feeder, timeout: float) -> None:
    """There must be queued work for the first dispatch to time: wait for the feeder's
    backlog if it fell behind (it submits only while p1 leads)."""
    monitor.wait(lambda: feeder.outstanding() > min(1000, feeder.backlog // 2), timeout, "queued tasks")


def failover_trial(cluster: LocalCluster, monitor: Monitor, feeder: Feeder, timeout: float) -> dict:
    wait_steady(cluster, monitor, "p1")
    wait_for_queued_work(monitor, feeder, timeout)
    index = len(monitor.leader_log)
    killed = time.monotonic()
    cluster.coordinators["p1"].kill()
    t_lead, epoch = monitor.wait(lambda: monitor.leader_put_after(index, "b1"), timeout, "b1 to lead")
    t_streams = monitor.wait(lambda: monitor.all_streams_on("b1", epoch), timeout, "all streams on b1")
    t_agents = monitor.wait(lambda: monitor.all_agents_on("b1", epoch), timeout, "all agents on b1")
    first_agent, median_agent = agent_spread(monitor, ("b1", epoch))
    t_dispatch = monitor.wait(lambda: monitor.first_running_after(epoch), timeout, "b1's first dispatch")
    index = len(monitor.leader_log)
    cluster.add_coordinator("p1", "primary")
    t_resign = monitor.wait(lambda: monitor.leader_delete_after(index), timeout + cluster.failback_delay,
                            "b1 to hand back")
    t_p1, epoch2 = monitor.wait(lambda: monitor.leader_put_after(index, "p1"), timeout, "p1 to lead again")
    t_back_streams = monitor.wait(lambda: monitor.all_streams_on("p1", epoch2), timeout, "all streams on p1")
    t_back = monitor.wait(lambda: monitor.all_agents_on("p1", epoch2), timeout, "all agents back on p1")
    return {"leads": t_lead - killed, "agents": t_agents - killed, "dispatch": t_dispatch - killed,
            "streams": t_streams - killed, "handback_streams": t_back_streams - t_resign,
            "first_agent": first_agent - killed, "median_agent": median_agent - killed,
            "handback_leads": t_p1 - t_resign, "handback": t_back - t_resign}


def switchover_trial(cluster: LocalCluster, monitor: Monitor, feeder: Feeder, source: str, target: str,
                     timeout: float) -> dict:
    wait_steady(cluster, monitor, source)
    wait_for_queued_work(monitor, feeder, timeout)
    index = len(monitor.leader_log)
    asked = time.monotonic()
    answer = cluster.api(source).switchover()
    answered = time.monotonic()
    if answer.get("target") != target:
        raise RuntimeError(f"switchover on {source} named {answer.get('target')}, expected {target}")
    t_lead, epoch = monitor.wait(lambda: monitor.leader_put_after(index, target), timeout, f"{target} to lead")
    t_streams = monitor.wait(lambda: monitor.all_streams_on(target, epoch), timeout, f"all streams on {target}")
    t_agents = monitor.wait(lambda: monitor.all_agents_on(target, epoch), timeout, f"all agents on {target}")
    first_agent, median_agent = agent_spread(monitor, (target, epoch))
    t_dispatch = monitor.wait(lambda: monitor.first_running_after(epoch), timeout, f"{target}'s first dispatch")
    return {"answer": answered - asked, "leads": t_lead - asked, "agents": t_agents - asked,
            "streams": t_streams - asked, "dispatch": t_dispatch - asked,
            "first_agent": first_agent - asked, "median_agent": median_agent - asked}


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


def summary(name: str, values: list[float], ttl: float) -> dict:
    if not values:
        return {"name": name, "n": 0}
    return {"name": name, "n": len(values), "median": statistics.median(values), "p99": p99(values),
            "max": max(values), "median_ttl": statistics.median(values) / ttl, "p99_ttl": p99(values) / ttl}


def print_row(row: dict) -> None:
    if not row["n"]:
        print(f"  {row['name']:<46} (no samples)")
        return
    print(f"  {row['name']:<46} n={row['n']:<3} median {row['median'] * 1000:8.1f} ms  p99 {row['p99'] * 1000:8.1f} ms"
          f"  (x ttl: {row['median_ttl']:.2f} / {row['p99_ttl']:.2f})")


def report(args, results: dict, check: dict | None, elapsed: float, builds: int, errors: list[str]) -> list[str]:
    """Print every figure (of the trials done so far) and the targets; returns the misses."""
    ttl = float(args.ttl)
    fo, so, sb = results["failover"], results["switchover"], results["switchback"]
    rows = [summary("failover (a) kill -> b1 leads", [r["leads"] for r in fo], ttl),
            summary("failover (b) kill -> all agents on b1", [r["agents"] for r in fo], ttl),
            summary("  (b') kill -> all streams welcomed by b1", [r["streams"] for r in fo], ttl),
            summary("  kill -> median agent key on b1", [r["median_agent"] for r in fo], ttl),
            summary("failover (c) kill -> b1's first dispatch", [r["dispatch"] for r in fo], ttl),
            summary("handback: b1 resigns -> p1 leads", [r["handback_leads"] for r in fo], ttl),
            summary("handback: b1 resigns -> all agents on p1", [r["handback"] for r in fo], ttl),
            summary("  b1 resigns -> all streams on p1", [r["handback_streams"] for r in fo], ttl),
            summary("switchover p1->b1: request -> b1 leads", [r["leads"] for r in so], ttl),
            summary("switchover p1->b1: request -> all agents", [r["agents"] for r in so], ttl),
            summary("  request -> all streams on b1", [r["streams"] for r in so], ttl),
            summary("  request -> b1's first dispatch", [r["dispatch"] for r in so], ttl),
            summary("switchover b1->p1: request -> p1 leads", [r["leads"] for r in sb], ttl),
            summary("switchover b1->p1: request -> all agents", [r["agents"] for r in sb], ttl),
            summary("  request -> all streams on p1", [r["streams"] for r in sb], ttl),
            summary("  request -> p1's first dispatch", [r["dispatch"] for r in sb], ttl)]
    by_name = {r["name"]: r for r in rows}
    misses = []

    def target(name: str, limit: float) -> None:
        row = by_name[name]
        if row["n"] and row["p99"] > limit:
            misses.append(f"{name}: p99 {row['p99'] * 1000:.0f} ms > {limit * 1000:.0f} ms")
    target("failover (b) kill -> all agents on b1", TARGET_AGENTS_P99)
    for name in ("handback: b1 resigns -> all agents on p1", "switchover p1->b1: request -> all agents",
                 "switchover b1->p1: request -> all agents"):
        target(name, TARGET_PLANNED_P99)
    if check and (check["lost"] or check["twice"] or check["unknown"]):
        misses.append(f"tasks lost {check['lost']}, recorded twice {check['twice']}, "
                      f"unknown {check['unknown']} (e.g. {check['examples']})")
    if args.json:
        print(json.dumps({"rows": rows, "audit": check, "trials": results, "elapsed": elapsed,
                          "misses": misses}, indent=2))
    print(f"\n{args.agents} agents (1 core) in {args.pools} processes, tasks of {args.task_seconds:g} s, "
          f"ttl {args.ttl} s, tls {args.tls}, max_cores_per_build "
          f"{args.max_cores_per_build}; {len(fo)} failovers, "
          f"{len(so)} switchover round trips; {builds} builds of {args.build_tasks} tasks; "
          f"{elapsed:.0f} s in all")
    for row in rows:
        print_row(row)
    if check:
        print(f"  tasks: {check['tasks']} submitted, {check['exactly_once']} ended exactly once, "
              f"{check['lost']} lost, {check['twice']} recorded twice")
    else:
        print("  tasks: not audited (the run did not finish)")
    print(f"targets: p99 (b) <= {TARGET_AGENTS_P99} s; handback and switchover p99 <= "
          f"{TARGET_PLANNED_P99 * 1000:.0f} ms -> " + ("met" if not misses else "MISSED: " + "; ".join(misses)))
    if errors:
        print(f"({len(errors)} watch errors, first: {errors[0]})")
    return misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="failover trials (SIGKILL p1)")
    parser.add_argument("--switchovers", type=int, default=None, help="planned round trips (default: --trials)")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--pools", type=int, default=4,
                        help="pool processes sharing the agents (several interpreters connect faster)")
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--failback-delay", type=float, default=1.0,
                        help="seconds p1 must be ready before b1 hands back (product default 5)")
    parser.add_argument("--build-tasks", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument("--task-seconds", type=float, default=1.0,
                        help="how long each (pretend) task runs on its agent; 0: it ends at once")
    parser.add_argument("--max-cores-per-build", type=int, default=0,
                        help="cluster setting during the trials (0: no limit); with --task-seconds 0,"
                             " 4 keeps no-op tasks from saturating the machine")
    parser.add_argument("--tls", action="store_true", help="TLS on every link (default off, for speed)")
    parser.add_argument("--dir", default=None, help="cluster directory (logs); kept")
    parser.add_argument("--timeout", type=float, default=60.0, help="per step")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    switchovers = args.trials if args.switchovers is None else args.switchovers

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="baton-failover-bench-"))
    cluster = LocalCluster(workdir, agents=0, backups=1, ttl=args.ttl, tls=args.tls,
                           failback_delay=args.failback_delay, cluster="bench")
    pools: list[PoolProcess] = []
    monitor = feeder = None
    failed = True
    results: dict[str, list[dict]] = {"failover": [], "switchover": [], "switchback": []}
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        cluster.start()
        # The handback delay is a cluster setting (it overrides --failback-delay).
        cluster.api("p1").request("PUT", "/api/v1/settings", {"failback_delay": args.failback_delay,
                                                              "max_cores_per_build": args.max_cores_per_build})
        start_rev = cluster.etcd().revision()
        monitor = Monitor(cluster.etcd(), cluster.keys, args.agents, start_rev)
        share, extra = divmod(args.agents, args.pools)
        for j in range(args.pools):
            pools.append(PoolProcess(cluster, share + (j < extra), cores=1, on_link=monitor.on_stream,
                                     prefix=f"bench-agent-{j + 1}-" if args.pools > 1 else "bench-agent-",
                                     task_seconds=args.task_seconds))
        epoch = cluster.leader().epoch
        try:
            monitor.wait(lambda: monitor.all_agents_on("p1", epoch), 120, f"{args.agents} agents on p1")
        except TimeoutError:
            for pool in pools:
                print(pool.log_tail(), file=sys.stderr)
            raise
        print(f"{args.agents} pool agents ({args.pools} processes) on p1 after {time.monotonic() - started:.1f} s; "
              f"ttl {args.ttl} s, failback_delay {args.failback_delay:g} s, tls {args.tls}", flush=True)
        feeder = Feeder(cluster, monitor, args.build_tasks, args.backlog)
        feeder.start()
        for i in range(args.trials):
            r = failover_trial(cluster, monitor, feeder, args.timeout)
            results["failover"].append(r)
            print(f"failover {i + 1:2d}: b1 leads {r['leads']:.3f} s, streams on b1 {r['streams']:.3f} s, "
                  f"agent keys on b1 {r['agents']:.3f} s (first {r['first_agent']:.3f}, median "
                  f"{r['median_agent']:.3f}), first dispatch {r['dispatch']:.3f} s; handback: p1 leads "
                  f"{r['handback_leads'] * 1000:.0f} ms, streams {r['handback_streams'] * 1000:.0f} ms, "
                  f"agent keys {r['handback'] * 1000:.0f} ms after b1 resigned", flush=True)
        for i in range(switchovers):
            r = switchover_trial(cluster, monitor, feeder, "p1", "b1", args.timeout)
            results["switchover"].append(r)
            b = switchover_trial(cluster, monitor, feeder, "b1", "p1", args.timeout)
            results["switchback"].append(b)
            print(f"switchover {i + 1:2d}: " + ", ".join(
                f"{d} agent keys {x['agents'] * 1000:.0f} ms (leads {x['leads'] * 1000:.0f}, streams "
                f"{x['streams'] * 1000:.0f}, first agent key "
                f"{x['first_agent'] * 1000:.0f}, median agent {x['median_agent'] * 1000:.0f}, "
                f"first dispatch {x['dispatch'] * 1000:.0f})"
                for d, x in (("p1->b1", r), ("b1->p1", b))), flush=True)
        feeder.stop()
        print(f"waiting for the {feeder.submitted} submitted tasks to finish ...", flush=True)
        wait_steady(cluster, monitor, "p1")
        cluster.api("p1").request("PUT", "/api/v1/settings", {"max_cores_per_build": 0})  # finish quickly
        check = audit(cluster, monitor, timeout=600)
        elapsed = time.monotonic() - started

        misses = report(args, results, check, elapsed, feeder.builds, monitor.errors)
        failed = False
        return 1 if misses else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"\nfailed: {exc}", file=sys.stderr)
        if results["failover"] or results["switchover"]:
            report(args, results, None, time.monotonic() - started, feeder.builds if feeder else 0,
                   monitor.errors if monitor else [])
        for proc in [cluster.etcd_proc, *cluster.coordinators.values()]:
            if proc is not None:
                tail = "\n".join(line[:300] for line in proc.log_tail(20).splitlines())
                print(f"--- {proc.name} log tail ---\n{tail}", file=sys.stderr)
        for pool in pools:
            print(f"--- pool log tail ---\n{pool.log_tail(20)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Each step on its own: one failing must not leave the others' processes running.
        for step in (feeder and feeder.stop, *[pool.stop for pool in pools], monitor and monitor.stop,
                     cluster.stop):
            if step:
                try:
                    step()
                except Exception as exc:  # noqa: BLE001
                    print(f"clean-up step failed: {exc!r}", file=sys.stderr)
        if failed or args.dir:
            print(f"logs: {workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
