"""A randomized fault run (Jepsen-style), then a check of etcd's whole history.

    python -m bench.chaos [--minutes 5] [--seed N] [--ttl 2] [--agents 4] [--dir DIR]

Starts a 3-member etcd (auto-compaction off: etcd's default), a primary p1
and a backup b1 that reach etcd through TCP proxies (so that either can be
cut off), and agents. A feeder keeps two builds of short tasks (some with
dependencies) in flight. For --minutes, faults drawn from --seed
(bench/chaos_faults.py) are applied one after another: SIGKILL and restart
of a coordinator, SIGSTOP/SIGCONT of one, one cut off from etcd, an etcd
member killed and restarted, an agent killed and restarted, a planned
switchover. Then a quiet period: every fault healed, no new build, until
every build ended and every agent is on the leader (or --quiet seconds).
Last the checker every fault test uses (bench/history_check.py) reads etcd's
history from revision 1 and the agents' logs.

Prints the seed and the command that reproduces it, each fault as applied,
the figures (faults per kind, failovers, time without a leader per fault
kind: median and p99) and the verdict. Exit status 0 when the checker found
nothing, 1 otherwise. A failing seed gives the same schedule again.

The etcd cluster and the proxies are the test harness's (tests/harness), as
in bench/dispatch.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_faults import COORDINATORS, KINDS, Fault, Hands, LeaderLog, schedule  # noqa: E402
from bench.failover_report import p99  # noqa: E402
from bench.history_check import BUILD_END_STATES, Verdict, check_history, json_object  # noqa: E402
from cli.api_client import ApiClient  # noqa: E402
from cli.local import LocalCluster  # noqa: E402
from lease.watcher import Watcher  # noqa: E402
from tests.harness.cluster import EtcdCluster  # noqa: E402
from tests.harness.proxy import TcpProxy  # noqa: E402

IN_FLIGHT = 2  # builds the feeder keeps running


@dataclasses.dataclass
class Applied:
    fault: Fault
    started: float   # monotonic
    ended: float
    outcome: str
    hit_epoch: int   # the epoch of the leader the fault hit (0: it did not hit the leader)


@dataclasses.dataclass
class Result:
    seed: int
    faults: list[Applied]
    verdict: Verdict
    builds_submitted: int
    leaderless: dict[str, list[float]]
    failovers: int
    quiet_seconds: float


class Feeder:
    """Keeps IN_FLIGHT builds running, submitted to whoever leads; its shapes come from the seed."""

    def __init__(self, cluster: LocalCluster, seed: int, ran: Path):
        self.cluster, self.rng, self.ran = cluster, random.Random(seed + 1), ran
        self.stop = threading.Event()
        self.submitted: list[str] = []
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def spec(self, n: int) -> dict:
        tasks = []
        for i in range(self.rng.randint(4, 12)):
            earlier = [t["id"] for t in tasks]
            deps = self.rng.sample(earlier, k=min(len(earlier), self.rng.randint(1, 2))) \
                if earlier and self.rng.random() < 0.3 else []
            tid = f"t{i:02d}"
            seconds = self.rng.choice((0.1, 0.3, 0.5, 1.0))
            tasks.append({"id": tid, "deps": deps,
                          "cmd": f"echo chaos{n:04d}/{tid} >> {self.ran}; sleep {seconds}"})
        return {"name": f"chaos{n:04d}", "tasks": tasks}

    def unfinished(self) -> int:
        keys, etcd = self.cluster.keys, self.cluster.etcd()
        states = {meta.key.decode(): (json_object(v) or {}).get("state")
                  for v, meta in etcd.get_prefix(keys.build_status)}
        return sum(1 for b in self.submitted if states.get(keys.status_of_build(b)) not in BUILD_END_STATES)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                if self.unfinished() < IN_FLIGHT:
                    leader = self.cluster.leader()
                    if leader is not None and leader.web:
                        api = ApiClient(leader.web, user="admin", password=self.cluster.admin_password,
                                        ca=self.cluster.ca, timeout=3.0)
                        spec = self.spec(n)
                        n += 1
                        self.submitted.append(api.request("POST", "/api/v1/builds", spec)["id"])
                        continue
            except Exception:  # noqa: BLE001 - faults make submissions fail; the feeder goes on
                self.errors += 1
            self.stop.wait(0.5)

    def start(self) -> "Feeder":
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)


def watch_leader(cluster: LocalCluster, log: LeaderLog) -> Watcher:
    def on_events(events):
        for e in events:
            name = (json_object(e.value) or {}).get("name") if e.type == "put" else None
            log.note(name, e.create_revision if name else 0)

    leader = cluster.leader()
    log.note(leader.name if leader else None, leader.epoch if leader else 0)
    return Watcher(cluster.etcd(), cluster.keys.leader, start_revision=cluster.etcd().revision() + 1,
                   on_events=on_events).start()


def settle(cluster: LocalCluster, feeder: Feeder, timeout: float, at_least: float) -> float:
    """The quiet period: at least `at_least` seconds (a handback after the last fault has
    time to happen), then until every build ended and every agent is on the leader."""
    began = time.monotonic()
    time.sleep(at_least)  # a fixed quiet time, part of the run, not a wait for something
    while time.monotonic() - began < timeout:
        try:
            leader = cluster.leader()
            if (leader is not None and feeder.unfinished() == 0
                    and len(cluster.agents_on(leader.name)) == len(cluster.agents)):
                break
        except Exception:  # noqa: BLE001 - etcd may still be electing
            pass
        time.sleep(0.5)
    return time.monotonic() - began


def run(directory: Path, seed: int, minutes: float, ttl: int = 2, agents: int = 4, quiet: float = 180.0,
        out=print) -> Result:
    directory = Path(directory)
    faults = schedule(seed, minutes * 60, ttl, agents, members=3)
    etcd_cluster = EtcdCluster(directory / "etcd", size=3).start()
    proxies = {name: [TcpProxy("127.0.0.1", m.client_port) for m in etcd_cluster.members] for name in COORDINATORS}
    cluster = LocalCluster(directory / "cluster", agents=agents, backups=1, cores=2, ttl=ttl, tls=False,
                           etcd_urls=etcd_cluster.urls, cluster="chaos", failback_delay=1.0, grace=4,
                           etcd_for={name: ",".join(p.url("http") for p in ps) for name, ps in proxies.items()})
    stop = threading.Event()
    feeder = watcher = None
    applied: list[Applied] = []
    try:
        cluster.start()
        leader_log = LeaderLog()
        watcher = watch_leader(cluster, leader_log)
        feeder = Feeder(cluster, seed, directory / "ran.log").start()
        hands = Hands(cluster, etcd_cluster, proxies, stop)
        began = time.monotonic()
        for fault in faults:
            delay = began + fault.at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            started = time.monotonic()
            holder, epoch = leader_log.at(started)
            try:
                fault = hands.resolve(fault)
                outcome = hands.apply(fault)
            except Exception as exc:  # noqa: BLE001 - a fault that could not be applied is reported
                outcome = f"error: {exc}"
            applied.append(Applied(fault, started, time.monotonic(), outcome,
                                   epoch if fault.target == holder else 0))
            out(f"  {fault}  [{started - began:6.1f} s] {outcome}")
        hands.heal_all()
        feeder.stop.set()
        quiet_for = settle(cluster, feeder, quiet, at_least=3 * ttl)
        ends = [a.started for a in applied[1:]] + [time.monotonic()]
        leaderless = defaultdict(list)
        for a, end in zip(applied, ends):
            # A fault on the leader leaves nobody able to lead until another epoch begins (a
            # kill: the dead process's key stays until its lease expires) or, for a pause or a
            # cut, until it is healed and the same leader acts again.
            until = end if a.fault.kind == "kill-coordinator" else a.started + a.fault.hold
            leaderless[a.fault.kind].append(leader_log.leaderless(a.started, end, a.hit_epoch, until))
        agent_logs = {name: cluster.dir / "logs" / f"{name}.log" for name in cluster.agents}
        verdict = check_history(cluster.etcd(), cluster.keys, 0, agent_logs=agent_logs,
                                agents_on_leader=sorted(cluster.agents), timeout=300)
        return Result(seed, applied, verdict, len(feeder.submitted), dict(leaderless),
                      max(0, len(verdict.epochs) - 1), quiet_for)
    finally:
        stop.set()
        if feeder is not None:
            feeder.close()
        if watcher is not None:
            watcher.stop()
        cluster.stop()
        for ps in proxies.values():
            for p in ps:
                p.close()
        etcd_cluster.stop()


def ran_twice(ran: Path) -> int:
    lines = ran.read_text().split() if ran.exists() else []
    return len(lines) - len(set(lines))


def report(result: Result, ran: Path, out=print) -> None:
    v = result.verdict
    per_kind = defaultdict(int)
    for a in result.faults:
        per_kind[a.fault.kind] += 1
    out(f"\nseed {result.seed}: {len(result.faults)} faults "
        f"({', '.join(f'{per_kind[k]} {k}' for k in KINDS if per_kind[k])}); {result.failovers} leader changes "
        f"(epochs {len(v.epochs)}); {result.builds_submitted} builds submitted, {v.builds_ended}/{v.builds} ended; "
        f"quiet period {result.quiet_seconds:.0f} s")
    out("time without a leader able to act after each fault, by kind (until the next fault; "
        "a leader killed, paused or cut off counts as none):")
    for kind in KINDS:
        values = result.leaderless.get(kind, [])
        if not values:
            out(f"  {kind:<18} not measured (no such fault)")
            continue
        hit = sum(1 for x in values if x > 0)
        out(f"  {kind:<18} n={len(values):<3} median {statistics.median(values):6.2f} s  p99 {p99(values):6.2f} s"
            f"  ({hit} with a gap)")
    out(f"task runs seen by the tasks themselves: {ran_twice(ran)} repeated (an agent killed mid-task: "
        f"its orphaned run and the re-run; not a checker failure)")
    out(f"checker: {v.summary()} ({v.seconds:.1f} s)")
    for p in v.problems[:50]:
        out(f"  PROBLEM {p}")
    out("VERDICT: " + ("PASS" if v.ok else "FAIL"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None, help="default: drawn at random (and printed)")
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=180.0, help="longest quiet period, seconds")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="baton-chaos-"))
    print(f"chaos seed {seed}: reproduce with python -m bench.chaos --seed {seed} --minutes {args.minutes:g} "
          f"--ttl {args.ttl} --agents {args.agents}  (in {directory})", flush=True)
    for fault in schedule(seed, args.minutes * 60, args.ttl, args.agents, members=3):
        print(f"  scheduled {fault}")
    print("applied:", flush=True)
    result = run(directory, seed, args.minutes, args.ttl, args.agents, args.quiet,
                 out=lambda s: print(s, flush=True))
    report(result, directory / "ran.log")
    if args.json:
        print(json.dumps({"seed": seed, "faults": len(result.faults), "failovers": result.failovers,
                          "leaderless": result.leaderless, "problems": result.verdict.problems}))
    return 0 if result.verdict.ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
