"""Where does a local cluster's CPU go, idle and during one warm `baton run` build?

    python bench/cluster_cpu.py [--rounds 3] [--idle 10] [--jobs 4] [--web] [--backups 0]
                                [--profile DIR] [--cares DIR] [--json]

Starts a cluster as bench/compile.py does (cli.local.LocalCluster: etcd, one
coordinator, two agents of one core each, no TLS, no web UI unless --web),
configures c-ares (tests/harness/cares.py) under `baton run` and builds it
once (cold: fills the scan cache). Then, each round: `--idle` seconds with
nothing running, and one warm build (`cmake --build --target clean`, then
`baton run -- cmake --build -jN` in the same tree). For each it reports the
CPU seconds (utime + stime of /proc/<pid>/stat, all threads) of each process
class: coordinators, their children (the web UI's gunicorn, with --web), etcd,
and the agents' own processes (not the compilers they run). Also the `baton
run` tree's CPU (wait4's rusage) and the build's wall, for scale.

--profile DIR: py-spy records the leader (non-blocking, 200 Hz, per thread,
only the thread holding the GIL: its Python work) during each idle period and
each warm build, as collapsed stacks in DIR/*.txt, and prints the innermost
Baton frames by samples. (py-spy's own CPU is not counted, but it slows the
leader: take the figures without --profile.)
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import cares  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """utime + stime of `pid` (all its threads, not its children), seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc/*/stat's ppid)."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Classes:
    """The cluster's processes by class, sampled as one snapshot of CPU seconds."""

    def __init__(self, cluster):
        self.cluster = cluster

    def pids(self) -> dict[str, list[int]]:
        coordinators = [p.pid for p in self.cluster.coordinators.values()]
        return {"coordinators": coordinators,
                "coordinators' children": [c for pid in coordinators for c in children_of(pid)],
                "etcd": [self.cluster.etcd_proc.pid],
                "agents (own process)": [p.pid for p in self.cluster.agents.values()]}

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_of(pid) for pid in pids} for name, pids in self.pids().items()}

    @staticmethod
    def used(before: dict, after: dict) -> dict[str, float]:
        # A process that appears in between (a gunicorn worker) counts from zero.
        return {name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
                for name, pids in after.items()}


def etcd_requests(cluster) -> collections.Counter:
    """etcd's gRPC messages received, by method (its /metrics; the bench's etcd has no TLS)."""
    import urllib.request

    counts: collections.Counter = collections.Counter()
    with urllib.request.urlopen(cluster.etcd_urls.replace("localhost", "127.0.0.1") + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                labels, value = line.rsplit(" ", 1)
                method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
                counts[method] += int(float(value))
    return counts


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def farm_options(cluster) -> list[str]:
    return ["--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
            "--agent-token-file", str(cluster.dir / "agent-token")]


class Spy:
    """py-spy recording one process (the leader) for a period; collapsed stacks to a file."""

    def __init__(self, directory: Path | None, pid: int):
        self.directory, self.pid, self.proc = directory, pid, None

    def start(self, name: str) -> None:
        if self.directory is None:
            return
        self.out = self.directory / f"{name}.txt"
        self.proc = subprocess.Popen(["py-spy", "record", "--pid", str(self.pid), "--format", "raw",
                                      "--rate", "200", "--threads", "--gil", "--nonblocking",
                                      "-o", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)   # py-spy attaches before the measured period starts

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(2)   # SIGINT: py-spy writes what it has
        self.proc.wait(30)
        self.proc = None
        summarise(self.out)


PACKAGES = ("coordinator/", "lease/", "cluster/", "web/", "agent/", "cli/")


def summarise(path: Path, top: int = 12) -> None:
    """The innermost Baton frame (file:line and function) of the collapsed stacks, by samples."""
    if not path.exists():
        print(f"    (py-spy wrote nothing to {path})")
        return
    leaf: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        frames = stack.split(";")
        ours = [f for f in frames if f.partition(" (")[2].startswith(PACKAGES)]
        leaf[ours[-1] if ours else frames[-1]] += int(count)
    print(f"    py-spy {path.name}: {total} samples; innermost Baton frame:")
    for frame, count in leaf.most_common(top):
        print(f"      {count:6d} {100 * count / max(total, 1):5.1f} %  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle period")
    parser.add_argument("--jobs", type=int, default=4, help="cmake --build -jN under baton run")
    parser.add_argument("--backups", type=int, default=0)
    parser.add_argument("--web", action="store_true", help="with the coordinators' web UI (gunicorn)")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the leader, stacks into DIR")
    parser.add_argument("--cares", default=None, help="a c-ares source tree (default: from pycares' sdist)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = str(ROOT)   # the cluster's processes and baton run run this tree
    from cli.local import LocalCluster

    report: dict = {"tree": str(ROOT), "idle": [], "build": []}
    with tempfile.TemporaryDirectory(prefix="baton-bench-cpu-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o711)   # a root agent's compiles run as nobody
        source = Path(args.cares) if args.cares else cares.unpack(cares.sdist() or cares.fetch(workdir), workdir)
        env = dict(os.environ, BATON_WRAPPER_DIR=str(workdir / "wrappers"), BATON_CC_NATIVE="1",
                   BATON_CACHE_DIR=str(workdir / "cache"))
        cluster = LocalCluster(workdir / "cluster", agents=2, backups=args.backups, cores=1, ttl=2, tls=False,
                               web=args.web).start()
        try:
            run = [sys.executable, "-m", "cli", "run", "--json", *farm_options(cluster), "--"]
            build = workdir / "build"
            cares.configure(source, build, env, tuple(r for r in run if r != "--json"))
            subprocess.run([*run, "cmake", "--build", str(build), f"-j{args.jobs}"], check=True, env=env,
                           capture_output=True)   # cold: fills the scan cache
            classes = Classes(cluster)
            spy = Spy(args.profile, cluster.coordinators["p1"].pid)
            for round_ in range(args.rounds):
                time.sleep(1)   # the cold build's (or last round's) tail settles
                spy.start(f"idle-{round_}")
                before, asked, started = classes.snapshot(), etcd_requests(cluster), time.monotonic()
                time.sleep(args.idle)
                used = Classes.used(before, classes.snapshot())
                wall = time.monotonic() - started
                report["idle"].append({"wall_s": wall, **used, "etcd requests": dict(etcd_requests(cluster) - asked)})
                spy.stop()
                subprocess.run(["cmake", "--build", str(build), "--target", "clean"], check=True, env=env,
                               capture_output=True)
                spy.start(f"build-{round_}")
                before, asked = classes.snapshot(), etcd_requests(cluster)
                mine, started = children_cpu(), time.monotonic()
                done = subprocess.run([*run, "cmake", "--build", str(build), f"-j{args.jobs}"], check=True,
                                      env=env, capture_output=True, text=True)
                wall, tree = time.monotonic() - started, children_cpu() - mine
                used = Classes.used(before, classes.snapshot())
                requests = dict(etcd_requests(cluster) - asked)
                spy.stop()
                figures = json.loads(done.stdout.splitlines()[-1])
                report["build"].append({"wall_s": wall, **used, "baton run tree": tree,
                                        "remote": f"{figures['remote']}/{figures['jobs']}", "etcd requests": requests})
                print(f"  round {round_}: idle {fmt(report['idle'][-1])}\n"
                      f"           build {fmt(report['build'][-1])}", flush=True)
        finally:
            cluster.stop()
    print(f"medians of {args.rounds} rounds ({ROOT}), load {os.getloadavg()[0]:.2f}:")
    for period in ("idle", "build"):
        rows = report[period]
        print(f"  {period:<6}" + "  ".join(
            f"{k} {statistics.median(r[k] for r in rows):.3f}" for k in rows[0] if isinstance(rows[0][k], float)))
    if args.json:
        print(json.dumps(report))
    return 0


def fmt(row: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                     if not isinstance(v, dict)) + "\n             etcd requests " + " ".join(
        f"{k} {v}" for k, v in sorted(row["etcd requests"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
