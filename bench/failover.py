"""How long does a whole cluster take to move to the backup, and back?

    python bench/failover.py [--trials 20] [--agents 200] [--pools 4] [--switchovers 20] [--ttl 2]
                             [--failback-delay 1] [--build-tasks 1000] [--backlog 3000]
                             [--task-seconds 1] [--max-cores-per-build 0] [--tls] [--dir DIR] [--json]
                             [--fault kill|stop|cut]

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

Each failover trial SIGKILLs the leading p1 (`--fault stop`: SIGSTOPs it, as
a host gone silent looks from b1: no connection ends, nothing is refused;
the lease decides; `--fault cut`: p1 runs in its own network namespace,
tests/harness/netns.py, and the wire to it is cut: its host is gone, packets
are lost, p1 runs on; the lease decides) and measures from the kill:
  (a) b1 leads: the leader key is put naming b1 (its create revision is the
      new epoch);
  (b) every agent is connected to b1: every agents/<name> value names b1
      with the new epoch;
  (c) b1 dispatches: the first tasks/<build>/<task> put with state
      "running" after the new epoch's revision.
Then p1 is restarted (a stopped p1 is killed first; a cut-off p1 is not
restarted: the wire is healed and p1 rejoins by itself); b1 hands back after
--failback-delay. Timed: from
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
(1.4 x ttl for ttl 2); with --fault stop or cut (the lease path) ttl + 0.8 s
(issue 15); switchover and handback p99 <= 300 ms. Exits 1 if one
is missed or a task was lost or recorded twice. Stops everything it started,
also on Ctrl-C or an error (process logs stay in --dir, a temporary
directory by default, removed unless --dir is given or the run fails).

The trials and the run are here; the parts: bench.failover_monitor (the
watches and the audit), bench.failover_load (the feeder), bench.failover_report
(the figures and the targets), bench.pool_process (the pool processes,
`python -m bench.pool`).
"""
from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.failover_load import Feeder  # noqa: E402
from bench.failover_monitor import Monitor, audit  # noqa: E402
from bench.failover_report import report  # noqa: E402
from bench.pool_process import PoolProcess  # noqa: E402
from tests.harness.netns import NetnsCluster, unavailable as netns_unavailable  # noqa: E402
from cluster.daemon_state import read_state  # noqa: E402
from cluster.keys import decode  # noqa: E402
from cli.local import LocalCluster  # noqa: E402


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


def revocations(cluster: LocalCluster, name: str) -> int:
    """Leases the coordinator revoked (its state file; it never restarts in a run)."""
    state = read_state(str(cluster.dir / "state" / f"{name}.state.json"), max_age=3600) or {}
    return int(state.get("revocations") or 0)


def agent_spread(monitor: Monitor, link: tuple) -> tuple[float, float]:
    """When the first agent key, and the median one, moved to link (for diagnosis)."""
    with monitor.changed:
        times = sorted(monitor.keys_view.arrivals.get(link, []))
    return times[0], statistics.median(times)


def wait_for_queued_work(monitor: Monitor, feeder: Feeder, timeout: float) -> None:
    """There must be queued work for the first dispatch to time: wait for the feeder's
    backlog if it fell behind (it submits only while p1 leads)."""
    monitor.wait(lambda: feeder.outstanding() > min(1000, feeder.backlog // 2), timeout, "queued tasks")


def failover_trial(cluster: LocalCluster, monitor: Monitor, feeder: Feeder, timeout: float,
                   fault: str = "kill") -> dict:
    wait_steady(cluster, monitor, "p1")
    wait_for_queued_work(monitor, feeder, timeout)
    index = len(monitor.leader_log)
    killed = time.monotonic()
    p1 = cluster.coordinators["p1"]
    {"kill": p1.kill, "stop": p1.pause, "cut": lambda: cluster.netns.cut()}[fault]()
    t_lead, epoch = monitor.wait(lambda: monitor.leader_put_after(index, "b1"), timeout, "b1 to lead")
    t_streams = monitor.wait(lambda: monitor.all_streams_on("b1", epoch), timeout, "all streams on b1")
    t_agents = monitor.wait(lambda: monitor.all_agents_on("b1", epoch), timeout, "all agents on b1")
    first_agent, median_agent = agent_spread(monitor, ("b1", epoch))
    t_dispatch = monitor.wait(lambda: monitor.first_running_after(epoch), timeout, "b1's first dispatch")
    if fault == "stop":
        p1.kill()   # a stopped process still holds its ports
    index = len(monitor.leader_log)
    if fault == "cut":
        cluster.netns.heal()   # the same p1 rejoins (tests/e2e/test_host_gone.py checks it wrote nothing late)
    else:
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
    parser.add_argument("--fault", choices=("kill", "stop", "cut"), default="kill",
                        help="kill: SIGKILL p1 (its port refuses: b1 revokes p1's lease at once); "
                             "stop: SIGSTOP p1 (silent, as a lost host: the lease decides); "
                             "cut: p1 in its own network namespace, the wire to it cut (its host gone: "
                             "the lease decides; needs root, no --tls)")
    args = parser.parse_args(argv)
    switchovers = args.trials if args.switchovers is None else args.switchovers

    if args.fault == "cut":
        why = "--tls: NetnsCluster runs without TLS" if args.tls else netns_unavailable()
        if why:
            print(f"--fault cut cannot run here: {why}", file=sys.stderr)
            return 2
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="baton-failover-bench-"))
    make = NetnsCluster if args.fault == "cut" else LocalCluster
    cluster = make(workdir, agents=0, backups=1, ttl=args.ttl, tls=args.tls,
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
            r = failover_trial(cluster, monitor, feeder, args.timeout, args.fault)
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
        print(f"fault {args.fault}: b1 revoked p1's lease {revocations(cluster, 'b1')} times "
              f"in {args.trials} failovers (crash detection)")
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
