"""What does Baton's compile path cost, on a real project?

    python bench/compile.py [--runs 30] [--jobs 2] [--cares DIR] [--cluster] [--json]

The project is c-ares (its sources ship in the PyPI sdist of pycares,
deps/c-ares; fetched with `pip download` unless --cares names a tree),
configured with CMake and Ninja. Measured, side by side in one run:

1. `baton cc` start-up: a tiny compile through the wrapper script outside
   `baton run` (the shell finds and execs the compiler), and inside it
   (Python without site: the argument rules and a job record), against the
   compiler called directly; median and p99 of --runs.
2. The remote path's halves on every c-ares compile (-O2 -g -MD): the local
   compile; the initiator's scan and pack (cli/compile_scan.py); the helper's
   compile of the shipped files (agent/compile_job.py, in-process, no
   network); how many objects and .d files are byte-identical to local ones.
3. Whole builds: `cmake --build -jN` locally, under `baton run --local-only`
   (the wrapper's overhead on a real build), and with --cluster under
   `baton run` on a local cluster (cli.local.LocalCluster: etcd, one
   coordinator, two agents of one core each serving compile jobs); the
   ratio to local. On one machine the helpers share its cores, so the figure
   is the remote path's overhead, not a speed-up.

Prints figures and ratios; exits 1 only if an object differs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.compile_job import run_compile  # noqa: E402
from cli.cc_args import RemotePlan, plan  # noqa: E402
from cli.compile_scan import pack, scan  # noqa: E402
from cli.run import install_wrappers  # noqa: E402
from tests.harness import cares  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def row(name: str, values: list[float], base: list[float] | None = None) -> dict:
    figures = {"name": name, "n": len(values), "median_ms": statistics.median(values) * 1000,
               "p99_ms": p99(values) * 1000}
    if base:
        figures["ratio"] = statistics.median(values) / statistics.median(base)
    ratio = f"  (x{figures['ratio']:.2f} of direct)" if "ratio" in figures else ""
    print(f"  {name:<44} n={figures['n']:<4} median {figures['median_ms']:8.1f} ms  "
          f"p99 {figures['p99_ms']:8.1f} ms{ratio}")
    return figures


def fetch_cares(workdir: Path) -> Path:
    """The c-ares tree of the pycares sdist (tests/harness/cares.py: the cached one, else pip download)."""
    return cares.unpack(cares.sdist() or cares.fetch(workdir), workdir)


def configure(source: Path, build: Path, env: dict, runner: list[str]) -> None:
    # With c-ares' tools, as the figures in the notes were measured.
    cares.configure(source, build, env, tuple(runner),
                    ("-DCARES_BUILD_TOOLS=ON", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", "-DCMAKE_C_FLAGS=-MD"))


def startup(runs: int, workdir: Path, env: dict) -> list[dict]:
    print("1. baton cc start-up (a tiny compile, -c, no optimisation)")
    tiny = workdir / "tiny.c"
    tiny.write_text("int tiny(void) { return 1; }\n")
    run_dir = workdir / "run"
    run_dir.mkdir(exist_ok=True)
    wrapper = os.path.join(install_wrappers(env["BATON_WRAPPER_DIR"]), "gcc")
    direct, outside, inside = [], [], []
    for _ in range(runs):
        for argv, extra, out in ((["gcc"], {}, direct), ([wrapper], {}, outside),
                                 ([wrapper], {"BATON_RUN_DIR": str(run_dir)}, inside)):
            started = time.perf_counter()
            subprocess.run([*argv, "-c", str(tiny), "-o", str(workdir / "tiny.o")], env=dict(env, **extra),
                           check=True)
            out.append(time.perf_counter() - started)
    return [row("gcc directly", direct), row("baton cc outside baton run", outside, direct),
            row("baton cc inside baton run (a job record)", inside, direct)]


def halves(build: Path) -> tuple[list[dict], int]:
    print("2. the remote path's halves on each c-ares compile (helper in-process, no network)")
    commands = json.loads((build / "compile_commands.json").read_text())
    local, scanned, helper, different = [], [], [], 0
    for command in commands:
        argv = shlex.split(command["command"])
        decided = plan(argv)
        if not isinstance(decided, RemotePlan):
            continue
        cwd = command["directory"]
        obj = os.path.join(cwd, decided.output)
        dep = os.path.splitext(obj)[0] + ".d"
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        local.append(time.perf_counter() - started)
        want_obj, want_dep = Path(obj).read_bytes(), Path(dep).read_bytes()
        started = time.perf_counter()
        job = pack(decided, cwd, scan(decided, cwd))
        scanned.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = run_compile(argv[0], job)
        helper.append(time.perf_counter() - started)
        if result.object != want_obj or Path(dep).read_bytes() != want_dep:
            different += 1
    rows = [row("local compile", local), row("initiator: scan + pack", scanned, local),
            row("helper: compile the shipped files", helper, local)]
    print(f"  objects and .d files byte-identical to local: {len(local) - different} of {len(local)}")
    return rows, different


def builds(source: Path, workdir: Path, env: dict, jobs: int, cluster=None) -> list[dict]:
    print(f"3. whole builds of c-ares, cmake --build -j{jobs}")
    out = []
    walls = {}
    remote = {}
    run = [sys.executable, "-m", "cli", "run"]
    variants = [("local", []), ("baton run --local-only", [*run, "--local-only", "--"])]
    if cluster is not None:
        variants.append(("baton run, 2 one-core helpers", [
            *run, "--json", "--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
            "--agent-token-file", str(cluster.dir / "agent-token"), "--"]))
    for name, runner in variants:
        build = workdir / f"build-{len(walls)}"
        configure(source, build, env, [r for r in runner if r != "--json"])
        started = time.perf_counter()
        done = subprocess.run([*runner, "cmake", "--build", str(build), f"-j{jobs}"], check=True, env=env,
                              capture_output=True, text=True)
        walls[name] = time.perf_counter() - started
        if "--json" in runner:
            figures = json.loads(done.stdout.splitlines()[-1])
            remote[name] = f"{figures['remote']}/{figures['jobs']} jobs remote"
    for name, wall in walls.items():
        ratio = wall / walls["local"]
        print(f"  {name:<44} wall {wall:6.2f} s  (x{ratio:.2f} of local)  {remote.get(name, '')}")
        out.append({"name": name, "wall_s": wall, "ratio": ratio, "remote": remote.get(name)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="tiny compiles per variant")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs of the whole builds")
    parser.add_argument("--cares", default=None, help="a c-ares source tree (default: from pycares' sdist)")
    parser.add_argument("--cluster", action="store_true",
                        help="also build with two one-core helper agents of a local cluster")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-compile-") as tmp:
        workdir = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(workdir / "wrappers"))
        source = Path(args.cares) if args.cares else fetch_cares(workdir)
        report = {"startup": startup(args.runs, workdir, env)}
        build = workdir / "build-halves"
        configure(source, build, env, [])
        report["halves"], different = halves(build)
        cluster = None
        if args.cluster:
            from cli.local import LocalCluster

            cluster = LocalCluster(workdir / "cluster", agents=2, backups=0, cores=1, ttl=2, tls=False,
                                   web=False).start()
        try:
            report["builds"] = builds(source, workdir, env, args.jobs, cluster)
        finally:
            if cluster is not None:
                cluster.stop()
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())
