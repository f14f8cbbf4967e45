"""How much CPU does `baton run`'s own Python process take per compile job?

    python bench/run_cpu.py [--tree DIR ...] [--rounds 3] [--warm 2] [--jobs 4] [--py-spy OUT]

On a 2-core machine the helpers share the cores with `baton run`, so every
CPU-ms of its Python (job server threads, gRPC, the grants' ticker) is taken
from the compiles (bench/README.md, "Where the warm build's +38 % goes").
For each --tree (a Baton source tree; default this one; give an old and a
new tree to compare them, alternating old, new, new, old, ...) a round
starts a LocalCluster from that tree (etcd, one coordinator, two one-core
helper agents, no TLS, as bench/compile.py), configures c-ares
(tests/harness/cares.py) under `baton run`, builds it once (cold scan
cache), then --warm times: clean, and build again under `baton run`
(-j --jobs; scans from the cache). `baton run` runs as a small shim that
calls cli.main and, at exit, writes getrusage(RUSAGE_SELF): user + system
CPU of that process only, all its threads, not its children (cmake, ninja,
`baton cc`, compilers). `baton run -- true` against the same cluster gives
the fixed part (imports, the cluster's stream, the end's record); the
per-job figure is (build - fixed) / jobs. --py-spy OUT records the last
warm build's `baton run` with py-spy (speedscope JSON, --gil: the thread holding the GIL) into OUT.
--threads prints each build's CPU by thread (job threads, main, gRPC's).
RUN_CPU_PATCH=FILE runs FILE in `baton run`'s process before cli.main (a
timing shim around the job server's functions, say; it may write
$RUN_CPU_OUT.parts as JSON, which is then printed).

Prints, per round and tree: the build's wall, jobs remote/local, scans
from the cache, the process's CPU and CPU per job; then the median per tree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tree measured: BATON_TREE (set by the driver for a --one child), else this one.
TREE = Path(os.environ.get("BATON_TREE") or ROOT)
sys.path.insert(0, str(TREE))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))   # tests.harness.cares when an old tree lacks it

# `baton run` in-process, its own CPU written at exit (RUSAGE_SELF: every thread, no children).
SHIM = """import atexit, json, os, re, resource, sys, threading, time
ended = {}   # CPU s of the Python threads that ended, by name without its number
_run = threading.Thread.run
def run(self):
    try:
        _run(self)
    finally:
        key = re.sub(r'[-_ ]?[0-9]+', '', self.name)
        ended[key] = ended.get(key, 0.0) + time.thread_time()
threading.Thread.run = run
def _write():
    names = {t.native_id: t.name for t in threading.enumerate()}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    threads = {f'{k} (ended)': v for k, v in ended.items()}   # and the live ones, by name
    tick = os.sysconf('SC_CLK_TCK')
    for tid in os.listdir('/proc/self/task'):
        try:
            with open(f'/proc/self/task/{tid}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        name = names.get(int(tid)) or stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2:].split()
        threads[name] = threads.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    with open(os.environ['RUN_CPU_OUT'], 'w') as f:
        json.dump({'user': ru.ru_utime, 'sys': ru.ru_stime, 'threads': threads,
                   'tree': os.path.dirname(os.path.dirname(sys.modules['cli.main'].__file__))}, f)
atexit.register(_write)
if os.environ.get('RUN_CPU_PATCH'):
    exec(open(os.environ['RUN_CPU_PATCH']).read())
from cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def baton_run(options: list[str], command: list[str], env: dict, out: Path,
              spy: Path | None = None) -> tuple[dict, dict, float]:
    """(CPU {'user', 'sys'} of baton run's process, its --json figures, wall s)."""
    argv = [sys.executable, "-c", SHIM, "run", "--json", *options, "--", *command]
    env = dict(env, RUN_CPU_OUT=str(out))
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recorder = None
    if spy is not None:
        recorder = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--format", "speedscope",
                                     "--rate", "250", "--gil", "-o", str(spy)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stdout, stderr = proc.communicate(timeout=600)
    wall = time.perf_counter() - started
    if recorder is not None:
        recorder.wait(60)
    if proc.returncode != 0:
        raise RuntimeError(f"baton run failed ({proc.returncode}):\n{stderr[-3000:]}")
    cpu = json.loads(out.read_text())
    if Path(cpu["tree"]).resolve() != TREE.resolve():
        raise RuntimeError(f"baton run ran {cpu['tree']}, not {TREE}")
    if os.environ.get('RUN_CPU_PATCH'):
        print(json.dumps({"parts": json.loads(Path(str(out) + ".parts").read_text()), "cmd": command}),
              file=sys.stderr)
    return cpu, json.loads(stdout.splitlines()[-1]), wall


def one(workdir: Path, warm: int, jobs: int, spy: Path | None) -> dict:
    """One round with the tree on sys.path: cluster, configure, cold build, `warm` warm builds."""
    from cli.local import LocalCluster
    from tests.harness import cares

    source = cares.unpack(cares.sdist() or cares.fetch(workdir), workdir)
    env = dict(os.environ, PYTHONPATH=str(TREE), BATON_WRAPPER_DIR=str(workdir / "wrappers"),
               BATON_CACHE_DIR=str(workdir / "cache"), BATON_CC_NATIVE="1")
    cluster = LocalCluster(workdir / "cluster", agents=2, backups=0, cores=1, ttl=2, tls=False, web=False).start()
    try:
        options = ["--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
                   "--agent-token-file", str(cluster.dir / "agent-token")]
        build = workdir / "build"
        cares.configure(source, build, env, (sys.executable, "-m", "cli", "run", "--local-only", "--"))
        cpu_out = workdir / "cpu.json"
        fixed = baton_run(options, ["true"], env, cpu_out)[0]
        cold = baton_run(options, ["cmake", "--build", str(build), f"-j{jobs}"], env, cpu_out)
        builds = []
        for i in range(warm):
            subprocess.run(["cmake", "--build", str(build), "--target", "clean"], check=True, env=env,
                           capture_output=True)
            builds.append(baton_run(options, ["cmake", "--build", str(build), f"-j{jobs}"], env, cpu_out,
                                    spy if i == warm - 1 else None))
    finally:
        cluster.stop()

    def figures(cpu: dict, summary: dict, wall: float) -> dict:
        total = cpu["user"] + cpu["sys"]
        fixed_s = fixed["user"] + fixed["sys"]
        return {"cpu_s": total, "threads": cpu.get("threads", {}), "per_job_ms": (total - fixed_s) / max(summary["jobs"], 1) * 1000,
                "wall_s": wall, "jobs": summary["jobs"], "remote": summary["remote"],
                "hits": summary.get("scan_cache_hits", 0)}

    return {"fixed_cpu_s": fixed["user"] + fixed["sys"], "cold": figures(*cold),
            "warm": [figures(*b) for b in builds]}


def show(label: str, fig: dict) -> str:
    return (f"{label:<6} wall {fig['wall_s']:5.2f} s  {fig['remote']}/{fig['jobs']} remote, "
            f"{fig['hits']} scans cached  baton run CPU {fig['cpu_s']:5.2f} s  "
            f"= {fig['per_job_ms']:5.2f} ms/job above fixed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", help="a Baton source tree (repeat to compare; default: this one)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per tree (alternating ABBA...)")
    parser.add_argument("--warm", type=int, default=2, help="warm builds per round")
    parser.add_argument("--jobs", type=int, default=4, help="cmake --build -jN")
    parser.add_argument("--py-spy", default=None, help="record the last warm build with py-spy (speedscope) here")
    parser.add_argument("--threads", action="store_true", help="also print the live threads' CPU at exit")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        spy = Path(args.py_spy) if args.py_spy else None
        print(json.dumps(one(Path(args.one), args.warm, args.jobs, spy)))
        return 0
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(ROOT)])]
    order = []
    for r in range(args.rounds):   # old, new, new, old, ...: drift in the machine's load cancels
        order += trees if r % 2 == 0 else trees[::-1]
    results: dict[str, list[dict]] = {t: [] for t in trees}
    for n, tree in enumerate(order):
        with tempfile.TemporaryDirectory(prefix="baton-bench-runcpu-") as tmp:
            os.chmod(tmp, 0o711)
            spy = f"{args.py_spy}.{n}.{Path(tree).name}.json" if args.py_spy else None
            done = subprocess.run([sys.executable, __file__, "--one", tmp, "--warm", str(args.warm),
                                   "--jobs", str(args.jobs), *(["--py-spy", spy] if spy else [])],
                                  env=dict(os.environ, BATON_TREE=tree, PYTHONPATH=tree), capture_output=True, text=True,
                                  cwd=tmp)   # not a tree: `python -c` and `-m` put the cwd first on sys.path
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(done.stdout.splitlines()[-1])
            if os.environ.get("RUN_CPU_PATCH"):
                print(done.stderr[-20000:])
        load = os.getloadavg()[0]
        results[tree].append(res)
        print(f"round {n + 1} {tree} (load {load:.1f}; `baton run -- true` {res['fixed_cpu_s']:.2f} s CPU)")
        print("  " + show("cold", res["cold"]))
        for w in res["warm"]:
            print("  " + show("warm", w))
            if args.threads:
                print("    live threads' CPU s: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(w["threads"].items(), key=lambda kv: -kv[1]) if v))
        sys.stdout.flush()
    print("medians of the warm builds:")
    for tree, rounds in results.items():
        warm = [w for r in rounds for w in r["warm"]]
        print(f"  {tree}: {statistics.median(w['per_job_ms'] for w in warm):.2f} ms/job, "
              f"CPU {statistics.median(w['cpu_s'] for w in warm):.2f} s, "
              f"wall {statistics.median(w['wall_s'] for w in warm):.2f} s, "
              f"fixed {statistics.median(r['fixed_cpu_s'] for r in rounds):.2f} s (n={len(warm)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
