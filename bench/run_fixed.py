"""What every `baton run` costs before and after its COMMAND: the wall of `baton run -- true`.

    python bench/run_fixed.py [--tree DIR ...] [--runs 10]

`baton run -- true` against a local cluster (cli.local.LocalCluster: etcd, one
coordinator, two one-core agents, ttl 2, no TLS, as bench/compile.py) does
everything a build's `baton run` does around its COMMAND: Python's start and
imports, the wrappers, the cluster's stream and the build's record, the job
server's start and stop, the exit. A build's wall pays all of it, and on a
c-ares build of ~6 s each 60 ms is 1 % (bench/README.md, issue 14). For
each --tree (a Baton source tree, default this one; give an old and a new
one to compare them) `python -m cli run` runs from that tree
(PYTHONPATH), the trees alternating (old, new, new, old, ...) against one
cluster; prints each tree's median, min and max wall, and the medians'
ratio to the first tree's. The first run of each tree (it builds the
native wrapper) is not counted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_run(tree: str, options: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", "run", *options, "--", "true"], env=env, check=True,
                   capture_output=True, cwd=tree)   # the cwd first on sys.path: this tree's `cli`
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", help="a Baton source tree (repeat to compare; default: this one)")
    parser.add_argument("--runs", type=int, default=10, help="measured runs per tree")
    args = parser.parse_args()
    from cli.local import LocalCluster

    trees = [str(Path(t).resolve()) for t in (args.tree or [str(ROOT)])]
    with tempfile.TemporaryDirectory(prefix="baton-bench-fixed-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o711)   # the agents' compile user enters it
        cluster = LocalCluster(work / "cluster", agents=2, backups=0, cores=1, ttl=2, tls=False, web=False).start()
        try:
            options = ["--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
                       "--agent-token-file", str(cluster.dir / "agent-token")]
            envs = {tree: dict(os.environ, PYTHONPATH=tree, BATON_WRAPPER_DIR=str(work / f"wrappers-{n}"),
                               BATON_CACHE_DIR=str(work / f"cache-{n}")) for n, tree in enumerate(trees)}
            for tree in trees:
                one_run(tree, options, envs[tree])   # builds the native wrapper
            walls: dict[str, list[float]] = {tree: [] for tree in trees}
            for r in range(args.runs):
                for tree in (trees if r % 2 == 0 else trees[::-1]):
                    walls[tree].append(one_run(tree, options, envs[tree]))
        finally:
            cluster.stop()
    base = statistics.median(walls[trees[0]])
    print(f"`baton run -- true` against a local cluster, {args.runs} runs a tree, alternating:")
    for tree, values in walls.items():
        median = statistics.median(values)
        print(f"  {tree}: median {median:.3f} s (min {min(values):.3f}, max {max(values):.3f}), "
              f"x{median / base:.2f} of the first tree's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
