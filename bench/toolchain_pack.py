"""What does a build that ships its compiler pay to get the archive (docs/design.md section 8)?

    python -m bench.toolchain_pack [--compiler gcc] [--rounds 3]

Per round, in a fresh cache directory, two `baton run`s in a row (one
cli.toolchain.Shipper each, as cli.job_server.JobServer makes them) take the
archive of `--compiler`'s identity, as the first job a helper answers with
`toolchain_wanted` makes them:

1. `first`: an empty cache, the compiler is packed (cli.toolchain.pack) and kept;
2. `second`: the next build reuses it (its sources stat'ed, its bytes hashed).

Printed: wall and CPU seconds of each (median over rounds), the archive size,
and second/first (the ratio to the baseline measured in the same run). Nothing
is sent: the helper's side (receive, unpack, hash) is unchanged by the cache.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from agent.compile_job import compiler_identity
from cli.toolchain import Shipper


def take(compiler: str, identity: str, cache: str, run_dir: str) -> tuple[float, float, int]:
    """(wall s, CPU s, archive bytes) of one build's Shipper taking the archive."""
    os.makedirs(run_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    shipper = Shipper(run_dir, cache=cache)
    packed = shipper._pack(compiler, identity)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    os.close(packed.fd)
    return wall, cpu, packed.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiler", default="gcc")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    identity = compiler_identity(args.compiler)
    figures: dict[str, list[tuple[float, float, int]]] = {"first": [], "second": []}
    with tempfile.TemporaryDirectory(prefix="baton-bench-pack-") as tmp:
        for round_ in range(args.rounds):
            cache = os.path.join(tmp, f"cache{round_}")
            for which in ("first", "second"):
                figures[which].append(take(args.compiler, identity, cache, os.path.join(tmp, f"{which}{round_}")))
            shutil.rmtree(cache)
    size = figures["first"][0][2]
    print(f"compiler {args.compiler} ({identity[:16]}), archive {size / 1e6:.1f} MB, {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}")
    medians = {}
    for which, runs in figures.items():
        medians[which] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"{which:>6}: wall {medians[which][0]:.3f} s, CPU {medians[which][1]:.3f} s (median)")
    print(f"second/first: wall {medians['second'][0] / medians['first'][0]:.3f}, "
          f"CPU {medians['second'][1] / medians['first'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
