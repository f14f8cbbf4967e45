"""How much memory does the coordinator use with 1,000 connected agents?

    python bench/memory.py [--agents 1000] [--settle 5] [--ttl 10] [--tls] [--dir DIR] [--json]

Starts a LocalCluster (single-member etcd, the primary p1 with its web UI,
no backup, no real agents), measures the resident set size (VmRSS from
/proc/<pid>/status) of the coordinator process and, separately, of its
descendants (the gunicorn master and workers of the web UI), once with no
agent (the baseline, in the same run) and once `--agents` pool agents
(bench.pool in a child process, 1 core each, one gRPC stream each) are all
connected to p1 (every agents/<name> names p1 with its epoch), split over
`--pools` pool processes (4). Each figure
is the largest of `--samples` readings taken over `--settle` seconds after
the state is reached; VmHWM (the peak) is printed too.

Target (issue "Coordinator, agents and builds", Performance): the
coordinator process <= 300 MB with 1,000 agents. Exits 1 if missed. Stops
everything it started, also on Ctrl-C or an error.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pool_process import PoolProcess  # noqa: E402
from cli.local import LocalCluster  # noqa: E402
from lease.errors import EtcdUnavailable  # noqa: E402

TARGET_MB = 300.0


def status_kb(pid: int, field: str) -> int:
    """A `field:   N kB` line of /proc/<pid>/status, in kB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below pid (gunicorn's master and its workers), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command may contain spaces and ')'
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sample(pid: int, samples: int, over: float) -> dict:
    """Largest RSS of the process and of the sum of its descendants over `over` seconds (MB)."""
    own = kids = 0
    n_kids = 0
    for i in range(samples):
        own = max(own, status_kb(pid, "VmRSS"))
        below = descendants(pid)
        n_kids = max(n_kids, len(below))
        kids = max(kids, sum(status_kb(p, "VmRSS") for p in below))
        if i < samples - 1:
            time.sleep(over / max(1, samples - 1))
    return {"coordinator_mb": own / 1024, "children_mb": kids / 1024, "children": n_kids,
            "coordinator_peak_mb": status_kb(pid, "VmHWM") / 1024}


def agents_on(cluster: LocalCluster, name: str, epoch: int) -> int:
    return sum(1 for rec in cluster.agent_records().values()
               if rec.coordinator == name and rec.epoch == epoch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--pools", type=int, default=4,
                        help="agent pool processes the agents are split over (one Python process with 1,000"
                             " agents, 2,500 threads, cannot keep up on a small machine)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of sampling in each state")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0, help="for all agents to connect")
    parser.add_argument("--dir", default=None, help="cluster directory (logs); kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="baton-memory-bench-"))
    cluster = LocalCluster(workdir, agents=0, backups=0, ttl=args.ttl, tls=args.tls, cluster="bench")
    pools: list[PoolProcess] = []
    failed = True
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        cluster.start()
        pid = cluster.coordinators["p1"].pid
        epoch = cluster.leader().epoch
        time.sleep(args.settle)  # let the web UI's workers finish starting before the baseline
        base = sample(pid, args.samples, args.settle)
        print(f"0 agents: coordinator {base['coordinator_mb']:.1f} MB, "
              f"gunicorn ({base['children']} processes) {base['children_mb']:.1f} MB", flush=True)
        started = time.monotonic()
        share, extra = divmod(args.agents, args.pools)
        for j in range(args.pools):
            pools.append(PoolProcess(cluster, share + (j < extra), cores=1, prefix=f"bench-agent-{j + 1}-"))
        deadline = started + args.timeout
        connected = 0
        while connected < args.agents:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {connected} of {args.agents} agents connected after {args.timeout:g} s")
            for pool in pools:
                if not pool.alive:
                    raise RuntimeError(f"an agent pool exited:\n{pool.log_tail()}")
            time.sleep(0.5)
            try:
                connected = agents_on(cluster, "p1", epoch)
            except EtcdUnavailable:
                pass  # 1,000 agents starting at once can keep etcd too busy to answer in time: ask again
        took = time.monotonic() - started
        print(f"{args.agents} agents connected to p1 in {took:.1f} s", flush=True)
        loaded = sample(pid, args.samples, args.settle)
        still = agents_on(cluster, "p1", epoch)
        ratio = loaded["coordinator_mb"] / base["coordinator_mb"] if base["coordinator_mb"] else float("nan")
        per_agent_kb = (loaded["coordinator_mb"] - base["coordinator_mb"]) * 1024 / args.agents
        ok = loaded["coordinator_mb"] <= TARGET_MB and still == args.agents
        if args.json:
            print(json.dumps({"agents": args.agents, "baseline": base, "loaded": loaded, "ratio": ratio,
                              "per_agent_kb": per_agent_kb, "connected_after_sampling": still}, indent=2))
        print(f"\ncoordinator RSS (largest of {args.samples} samples over {args.settle:g} s), tls {args.tls}:")
        print(f"  coordinator process   0 agents {base['coordinator_mb']:7.1f} MB   {args.agents} agents "
              f"{loaded['coordinator_mb']:7.1f} MB   ratio {ratio:.2f}   (+{per_agent_kb:.0f} kB per agent; "
              f"peak VmHWM {loaded['coordinator_peak_mb']:.1f} MB)")
        print(f"  gunicorn (children)   0 agents {base['children_mb']:7.1f} MB   {args.agents} agents "
              f"{loaded['children_mb']:7.1f} MB   ({loaded['children']} processes)")
        print(f"  total                 0 agents {base['coordinator_mb'] + base['children_mb']:7.1f} MB   "
              f"{args.agents} agents {loaded['coordinator_mb'] + loaded['children_mb']:7.1f} MB")
        if still != args.agents:
            print(f"  only {still} of {args.agents} agents were still connected after sampling")
        print(f"target: coordinator process <= {TARGET_MB:.0f} MB with {args.agents} agents -> "
              + ("met" if ok else "MISSED"))
        failed = False
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"\nfailed: {exc}", file=sys.stderr)
        for proc in [cluster.etcd_proc, *cluster.coordinators.values()]:
            if proc is not None:
                print(f"--- {proc.name} log tail ---\n{proc.log_tail(20)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for pool in pools:
            try:
                pool.stop()
            except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                print(f"clean-up of a pool failed: {exc!r}", file=sys.stderr)
        cluster.stop()
        if failed or args.dir:
            print(f"logs: {workdir / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
