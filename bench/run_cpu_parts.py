"""`baton run`'s CPU per job, part by part, without a cluster: trees compared alternately.

    python bench/run_cpu_parts.py --tree OLD --tree NEW [--rounds 6] [--passes 3]

bench/run_cpu.py measures whole builds, whose CPU on a shared 2-core machine
varies by more than the parts changed here. This one runs, for each --tree
in its own process (old, new, new, old, ...), the job server's in-process work
on every c-ares compile (tests/harness/cares.py, configured with -MD) as
`baton run` does for a warm build, with the thread CPU clock around each:
decoding the `baton cc` request frame (cli/ccwire.py), plan (cli/cc_args.py),
the scan-cache hit (cli/scan_cache.py), the input paths and their digests
(cli/job_inputs.py, every content already sent) and the CompileRequest,
serialized; then the compiler identity a build computes once
(cli/job_server.py `_identity`: the tree's own), and the start-up of
`baton run --local-only -- true` (its process CPU, as bench/run_cpu.py
measures it). No gRPC, no helper: their share is in bench/run_cpu.py.
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

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, shlex, sys, tempfile, time
from cli import ccwire
from cli.cc_args import plan
from cli.compile_scan import input_paths, scan, system_dirs
from cli.job_inputs import Digests
from cli.scan_cache import ScanCache, cached_scan
from cluster.protocol import compile_pb2 as pb
import cli.job_server as job_server

build, cache, passes = sys.argv[1], sys.argv[2], int(sys.argv[3])
commands = json.load(open(os.path.join(build, "compile_commands.json")))
env = dict(os.environ)
frames = [ccwire.encode({"argv": shlex.split(c["command"]), "cwd": c["directory"], "env": env})[8:]
          for c in commands]
identity = job_server._identity.__class__(job_server._identity._compute)  # a fresh Once: as a new build
t = time.thread_time()
ident = identity("gcc")
identity_s = time.thread_time() - t
digests = Digests()
# One hash cache for both, as cli/job_server.py makes them (a tree that has it: cli/file_hashes.py).
scans = ScanCache(cache, hashes=digests.hashes) if hasattr(digests, "hashes") else ScanCache(cache)
parts = {"decode": 0.0, "plan": 0.0, "scan cache hit": 0.0, "inputs": 0.0, "request": 0.0}
jobs = 0
for n in range(passes + 1):   # the first pass fills the caches (a cold build)
    for frame in frames:
        c = time.thread_time
        t0 = c(); job = ccwire.decode(frame); argv, cwd, jenv = list(job["argv"]), job["cwd"], dict(job["env"])
        t1 = c(); decided = plan(argv)
        if not hasattr(decided, "flags"):
            continue
        t2 = c()
        dirs = system_dirs(decided.compiler, decided.language)
        found = cached_scan(scans, decided, cwd, jenv, ident, dirs, lambda: scan(decided, cwd, env=jenv))
        t3 = c()
        seen = (found.seen,) if hasattr(found, "seen") else ()   # the lookup's stamps, handed over
        inputs = digests.inputs(input_paths(decided, cwd, found), lambda d: n == 0, *seen)
        t4 = c()
        pb.CompileRequest(grant="g" * 12, epoch=1, compiler=os.path.basename(decided.compiler),
                          compiler_identity=ident, args=decided.flags, source=decided.source,
                          cwd=os.path.abspath(cwd), system_dirs=dirs, inputs=inputs,
                          locale={"LANG": "C"}).SerializeToString()
        t5 = c()
        if n:
            jobs += 1
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                parts[k] += v
assert os.path.dirname(os.path.dirname(ccwire.__file__)) == os.environ["PYTHONPATH"], ccwire.__file__
print(json.dumps({"per_job_ms": {k: v / jobs * 1000 for k, v in parts.items()}, "jobs": jobs,
                  "identity_ms": identity_s * 1000, "hits": scans.hits}))
"""

SHIM = """import atexit, json, os, resource, sys
atexit.register(lambda: print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_utime
                                         + resource.getrusage(resource.RUSAGE_SELF).ru_stime), file=sys.stderr))
from cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--passes", type=int, default=3, help="warm passes over the c-ares compiles a round")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.harness import cares

    trees = [str(Path(t).resolve()) for t in args.tree]
    with tempfile.TemporaryDirectory(prefix="baton-bench-runcpu-parts-") as tmp:
        work = Path(tmp)
        source = cares.unpack(cares.sdist() or cares.fetch(work), work)
        build = work / "build"
        cares.configure(source, build, dict(os.environ), (), ("-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
                                                              "-DCMAKE_C_FLAGS=-MD"))
        time.sleep(1.5)   # past the scan cache's racy window (cli/scan_cache.RACY_NS) after configure
        results: dict[str, list[dict]] = {t: [] for t in trees}
        for r in range(args.rounds):
            for tree in (trees if r % 2 == 0 else trees[::-1]):
                env = dict(os.environ, PYTHONPATH=tree, BATON_CACHE_DIR=str(work / f"cache-{Path(tree).name}"))
                done = subprocess.run([sys.executable, "-c", CHILD, str(build), str(work / f"scan-{r}-{len(results[tree])}"),
                                       str(args.passes)], env=env, capture_output=True, text=True, check=True,
                                      cwd=tmp)   # not a tree: `python -c` puts the cwd first on sys.path
                figures = json.loads(done.stdout.splitlines()[-1])
                start = subprocess.run([sys.executable, "-c", SHIM, "run", "--local-only", "--", "true"], env=env,
                                       capture_output=True, text=True, check=True, cwd=tmp)
                figures["startup_ms"] = float(start.stderr.strip().splitlines()[-1]) * 1000
                results[tree].append(figures)
                parts = ", ".join(f"{k} {v:.3f}" for k, v in figures["per_job_ms"].items())
                print(f"round {r + 1} {tree}: per job ms: {parts} (sum {sum(figures['per_job_ms'].values()):.3f}); "
                      f"identity {figures['identity_ms']:.1f} ms; baton run start-up {figures['startup_ms']:.0f} ms "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        print("medians:")
        for tree, rounds in results.items():
            total = statistics.median(sum(f["per_job_ms"].values()) for f in rounds)
            print(f"  {tree}: job path {total:.3f} ms/job, identity {statistics.median(f['identity_ms'] for f in rounds):.1f} ms,"
                  f" start-up {statistics.median(f['startup_ms'] for f in rounds):.0f} ms (n={len(rounds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
