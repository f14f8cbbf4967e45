"""A bench-only pool: many agents in one process, for the throughput and
failover benchmarks (200 agents; 50 x 4 cores). Not for production.

Each pool agent is a real `agent.core.Agent`: its own presence key
`agents/<name>`, its own watch of the leader key and its own decision about
it, its own gRPC channel and Connect stream, the same protocol code as a
real agent. What is shared or simplified, on purpose:

- one etcd client for all agents; every agent's links run as tasks on one
  event loop with one grpc.aio channel per coordinator (bench.aio_link; each
  agent still has its own streams and follows the same protocol code);
- ONE lease for all presence keys (a shared AgentLease, ticked by the pool's
  loop): if it is lost, every pool agent's key disappears at once and all
  re-register on the new lease. A real agent has its own lease;
- two threads turn every agent instead of one thread per agent: one
  follows the leader key and opens/closes streams (`Agent.tick_link`, woken
  by one shared event), one ticks the shared lease and writes the presence
  keys that changed, many per transaction, so slow etcd writes never delay
  a failover;
- tasks run no process: each ends with exit code 0 at once, or `task_seconds`
  after it started (`PretendRunner`, one clock thread for the whole pool);
- with `pretend_helper` (`--pretend-helper`), every agent's presence names a
  Helper address that serves nothing: the leader lends their cores to
  `baton run` builds and the agents take Lend/Unlend as a real agent does
  (agent.helper.Grants), for bench/grants.py; no compile job reaches them;
- results are buffered in memory only (no `<workdir>/.results/`);
- each agent's watch of the leader key is its own etcd watch, but all of a
  process's watches share one stream and one reading thread
  (bench.watch_mux), as etcd's Go client shares them; the stream asks etcd
  for progress every 2 s instead of 0.5 s.

Run from a benchmark: `AgentPool(urls, cluster, count=200, cores=1).start()`,
or as a process: `python -m bench.pool --count 200 --cores 1 --etcd URL --cluster C`
(bench.pool_process.PoolProcess starts one so from a benchmark).
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import signal
import sys
import threading
import time
from typing import Callable, Iterable

from bench.aio_link import AioLinks
from agent.config import AgentConfig
from agent.core import Agent
from agent.presence import AgentLease
from agent.results import ResultBuffer
from agent.runner import TaskRef, TaskResult
from lease.client import EtcdConfig, connect
from lease.errors import EtcdError
from bench.watch_mux import WatchMux

log = logging.getLogger(__name__)

PRESENCE_BATCH = 100    # presence puts per etcd transaction
PRESENCE_POLL = 0.05    # s between lease ticks (and looks at agents that woke), at most
PRESENCE_SWEEP = 1.0    # s between looks at every agent's presence value
PRETEND_HELPER = "127.0.0.1:9"   # --pretend-helper: the discard port (nothing connects to it)


class _Wake:
    """One pool agent's wake-up (a link welcomed or lost, the leader key
    changed): marks that agent due for the link loop, which then turns it
    alone, not all the pool's agents, and has the presence loop look at once,
    not at its next poll, so that a move shows in agents/ without delay."""

    def __init__(self, pool: "AgentPool", index: int):
        self.pool, self.index = pool, index

    def set(self) -> None:
        self.pool._mark_due(self.index)


class TaskClock:
    """One thread that ends the pool's pretend tasks when they are due
    (a heap of deadlines; not a timer thread per task)."""

    def __init__(self):
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pool task clock", daemon=True)
                self._thread.start()
            heapq.heappush(self._due, (when, next(self._seq), fn))
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, fn = heapq.heappop(self._due)
            try:
                fn()
            except Exception:  # noqa: BLE001 - one agent's failure must not stop the others' tasks
                log.exception("pool task clock: a task's end failed")


class PretendRunner:
    """Runs no process: every task ends `seconds` after it started (at once
    for 0) with exit code 0. Like the real Runner, it runs a (build, task,
    attempt) at most once, lists what runs (for the Hello at a move) and
    reports no result for a cancelled task."""

    def __init__(self, on_result: Callable[[TaskResult], None], seconds: float = 0.0,
                 clock: TaskClock | None = None):
        self.on_result = on_result
        self.seconds = seconds
        self.clock = clock
        self.completed = 0
        self._seen: set[TaskRef] = set()
        self._running: set[TaskRef] = set()
        self._lock = threading.Lock()

    def start(self, ref: TaskRef, cmd: str, timeout: float = 0.0, env: dict | None = None) -> bool:
        with self._lock:
            if ref in self._seen:
                return False
            self._seen.add(ref)
            at_once = self.seconds <= 0 or self.clock is None
            if at_once:
                self.completed += 1
            else:
                self._running.add(ref)
        if at_once:
            self.on_result(TaskResult(ref, 0, 0.0, b"", ""))
        else:
            self.clock.call_at(time.monotonic() + self.seconds, lambda: self._end(ref))
        return True

    def _end(self, ref: TaskRef) -> None:
        with self._lock:
            if ref not in self._running:
                return  # cancelled meanwhile
            self._running.discard(ref)
            self.completed += 1
        self.on_result(TaskResult(ref, 0, self.seconds, b"", ""))

    def mark_seen(self, refs: Iterable[TaskRef]) -> None:
        with self._lock:
            self._seen.update(refs)

    def cancel(self, ref: TaskRef) -> bool:
        with self._lock:
            if ref not in self._running:
                return False
            self._running.discard(ref)
            return True

    def running(self) -> list[TaskRef]:
        with self._lock:
            return list(self._running)

    def stop(self, timeout: float = 0.0) -> None:
        with self._lock:
            self._running.clear()  # as a stopped agent's killed tasks: no results


class AgentPool:
    """`count` agents named `<prefix>1..N` with `cores` each; see the module doc."""

    def __init__(self, etcd: str | EtcdConfig, cluster: str, count: int, cores: int = 4, lease_ttl: int = 10,
                 name_prefix: str = "bench-agent-", group: str = "bench", agent_token: str | None = None,
                 grpc_ca: str | None = None, tick_interval: float = 0.25, task_seconds: float = 0.0,
                 pretend_helper: bool = False, tls_cert: str | None = None, tls_key: str | None = None):
        """tls_cert, tls_key: the client certificate every agent of the pool presents to the
        coordinators (with grpc_ca): a pool certificate, good for any agent name."""
        etcd_config = etcd if isinstance(etcd, EtcdConfig) else EtcdConfig.from_urls(etcd)
        self.etcd = connect(etcd_config)
        self.lease = AgentLease(self.etcd, ttl=lease_ttl)
        self.tick_interval = min(tick_interval, self.lease.renew_deadline / 4)
        self._wake = threading.Event()
        self._presence_due = threading.Event()
        self._due: set[int] = set()   # agents whose wake-up was set since the link loop last looked
        self._presence_changed: set[int] = set()   # ... since the presence loop last looked
        self._due_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        configs = [AgentConfig(name=f"{name_prefix}{i}", cores=cores, group=group, workdir="/nonexistent",
                               etcd=etcd_config, cluster=cluster, agent_token=agent_token, grpc_ca=grpc_ca,
                               tls_cert=tls_cert, tls_key=tls_key, lease_ttl=lease_ttl) for i in range(1, count + 1)]
        # Every agent's links (active and standby) as tasks on one event loop, one
        # grpc.aio channel per coordinator: no thread per link or stream.
        self.links = (AioLinks(configs[0].root_certificates(), configs[0].client_certificate())
                      if configs else AioLinks())
        # Each agent's own watch of the leader key, all on one etcd stream read by one thread.
        self.watches = WatchMux(self.etcd, progress_interval=2.0, liveness_timeout=6.0)
        clock = TaskClock()
        self.agents = [Agent(config, etcd=self.etcd, lease=self.lease,
                             runner_factory=lambda on_result: PretendRunner(on_result, task_seconds, clock),
                             results=ResultBuffer(None), watch=self.watches.watch,
                             wake=_Wake(self, i), link_factory=self.links.link)
                       for i, config in enumerate(configs)]
        if pretend_helper:
            for agent in self.agents:
                agent.helper_address = PRETEND_HELPER

    def start(self) -> "AgentPool":
        for agent in self.agents:
            agent.start(run_loop=False)
        self._threads = [threading.Thread(target=self._link_loop, name="agent pool links", daemon=True),
                         threading.Thread(target=self._presence_loop, name="agent pool presence", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop every agent, then revoke the shared lease (every key left goes with it)."""
        self._stopping.set()
        self._wake.set()
        self._presence_due.set()
        for thread in self._threads:
            thread.join(10)
        for agent in self.agents:
            agent.stop()
        self.watches.close()
        self.links.close()
        self.lease.close()
        self.etcd.close()

    def connected(self) -> int:
        """How many pool agents have a welcomed stream right now."""
        return sum(1 for a in self.agents if a.connected_to is not None)

    def completed(self) -> int:
        """Assignments completed so far, over all agents."""
        return sum(a.runner.completed for a in self.agents)

    def _link_loop(self) -> None:
        """Reacts to leader changes for every agent (no etcd I/O): after a
        failover every agent dials the new leader without waiting for the
        presence writes. Turns the agents that woke it; all of them every
        tick_interval. (Turning all 50 of a process's agents at each of the
        ~150 wake-ups of a handover cost the pool more CPU than the move.)"""
        next_sweep = 0.0
        while not self._stopping.is_set():
            self._wake.clear()  # before taking the due set: a later mark sets it again
            with self._due_lock:
                due, self._due = self._due, set()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.tick_interval
                self._each(self.agents, Agent.tick_link)
            else:
                self._each([self.agents[i] for i in sorted(due)], Agent.tick_link)
            self._wake.wait(max(0.0, next_sweep - time.monotonic()))

    def _mark_due(self, index: int) -> None:
        with self._due_lock:
            self._due.add(index)
            self._presence_changed.add(index)
        for event in (self._wake, self._presence_due):
            if not event.is_set():  # set() takes a lock and notifies even when set already
                event.set()

    def _presence_loop(self) -> None:
        """Keeps the shared lease alive and the presence keys up to date: the
        keys that changed (e.g. after every agent moved to a new leader) are
        written in transactions of up to PRESENCE_BATCH puts, not one by one."""
        next_sweep = 0.0
        while not self._stopping.is_set():
            self.lease.tick()
            self._presence_due.clear()  # before taking the due set: a later mark sets it again
            with self._due_lock:
                due, self._presence_changed = self._presence_changed, set()
            if time.monotonic() >= next_sweep:  # also a new lease, a write to retry
                next_sweep = time.monotonic() + PRESENCE_SWEEP
                candidates = self.agents
            else:
                candidates = [self.agents[i] for i in sorted(due)]
            changes = [(agent, wanted) for agent in candidates
                       if (wanted := agent.presence.wanted(agent.presence_value())) is not None]
            for i in range(0, len(changes), PRESENCE_BATCH):
                chunk = changes[i:i + PRESENCE_BATCH]
                ops = [self.etcd.ops.put(agent.presence.key, value, lease=lease) for agent, (value, lease) in chunk]
                try:
                    self.etcd.txn([], ops, [])
                except EtcdError as exc:
                    for agent, _ in chunk:
                        agent.presence.write_failed(exc)
                    continue
                for agent, wanted in chunk:
                    agent.presence.written(wanted)
                self.lease.tick()
            self._presence_due.wait(PRESENCE_POLL)

    def _each(self, agents: list[Agent], turn: Callable[[Agent], None]) -> None:
        for agent in agents:
            if self._stopping.is_set():
                return
            try:
                turn(agent)
            except Exception:  # noqa: BLE001 - one agent's failure must not stop the others
                log.exception("pool agent %s: loop turn failed", agent.config.name)


def report_links(pool: AgentPool, stop: threading.Event, out=sys.stdout) -> None:
    """Until `stop`: one line "<monotonic time> <agent> <coordinator> <epoch> <standby>" on
    `out` whenever an agent's welcomed stream or its standby stream changes ("-" for none;
    the standby is the successor its leader named), for bench.pool_process's reader.

    Looks at the agents whose wake-up was set (a link welcomed or lost) as it happens,
    at all of them every 100 ms (standby streams): polling all agents every 5 ms took a
    fifth of the pool's CPU. CLOCK_MONOTONIC is one clock for the whole machine, so the
    parent process can compare the times with its own."""
    last, changed, woke, mark_due, lock = {}, set(), threading.Event(), pool._mark_due, threading.Lock()

    def on_due(index):
        mark_due(index)
        with lock:
            changed.add(index)
        woke.set()
    pool._mark_due = on_due  # the agents' wake-ups call pool._mark_due: see them too
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
            out.write("\n".join(lines) + "\n")
            out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool", description="Bench-only pool of agents.")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--prefix", default="bench-agent-")
    parser.add_argument("--etcd", default=None)
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--lease-ttl", type=int, default=10)
    parser.add_argument("--task-seconds", type=float, default=0.0, help="how long each pretend task runs")
    parser.add_argument("--agent-token", default=None)
    parser.add_argument("--ca", default=None, help="CA certificate for the coordinators' gRPC (TLS), and for "
                                                   "etcd unless --etcd-ca is given")
    parser.add_argument("--tls-cert", default=None, help="the pool's client certificate for the coordinators' gRPC "
                                                         "(one good for any agent name: cli.certs any_name)")
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--etcd-ca", default=None)
    parser.add_argument("--etcd-cert", default=None, help="the pool's etcd identity (the agent-pool user)")
    parser.add_argument("--etcd-key", default=None)
    parser.add_argument("--report-links", action="store_true",
                        help="print every change of an agent's streams on stdout (see report_links)")
    parser.add_argument("--pretend-helper", action="store_true",
                        help="advertise a Helper service (serving nothing), so that the leader lends the cores")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    etcd = EtcdConfig.from_urls(args.etcd, ca_cert=args.etcd_ca or args.ca, cert=args.etcd_cert, key=args.etcd_key)
    pool = AgentPool(etcd, args.cluster, args.count, args.cores, args.lease_ttl, name_prefix=args.prefix,
                     agent_token=args.agent_token, grpc_ca=args.ca, task_seconds=args.task_seconds,
                     pretend_helper=args.pretend_helper, tls_cert=args.tls_cert, tls_key=args.tls_key).start()
    print("pool started", file=sys.stderr, flush=True)
    if args.report_links:
        report_links(pool, stop)
    else:
        stop.wait()
    pool.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
