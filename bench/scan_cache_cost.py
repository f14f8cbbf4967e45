"""What the scan cache (cli/scan_cache.py) costs and keeps, on c-ares' 94 compiles, without a cluster.

    PYTHONPATH=$PWD python bench/scan_cache_cost.py [--cares DIR] [--passes 3]

c-ares is configured afresh (CMake + Ninja, as bench/compile.py does), then its 94 compiles
go through `cached_scan` (the preprocessor scans as `baton run` runs them) with the cache's
clock injected (cli.scan_cache.ScanCache's clock_ns):

- just after the configure: the clock stands 0.5 s after the build directory's last change,
  as for the first build after a configure (the jobs bench/compile.py's warm build missed);
  how many entries are stored, and the store's own time a job (the scan excluded);
- settled: a clock 10 s later; the lookup's time a job, a fresh ScanCache (a new `baton run`:
  every header hashed once) then the same one again;
- for the entries stored just after the configure, a lookup while still racy (listings), then
  the first settled lookup (which may rewrite them) and one after it.

Run it from the trees to compare (each its own PYTHONPATH), alternately; it prints medians of
the CPU time (the initiator shares its cores with the build: CPU is what a job costs it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.cc_args import plan  # noqa: E402
from cli.compile_scan import scan, system_dirs  # noqa: E402
from cli.scan_cache import ScanCache, cached_scan  # noqa: E402
from tests.harness import cares  # noqa: E402


def jobs_of(build: Path) -> list:
    """The compiles as Ninja runs them (CMake's -MD with ninja's -MT/-MF)."""
    out = []
    for command in json.loads((build / "compile_commands.json").read_text()):
        argv = shlex.split(command["command"])
        obj = argv[argv.index("-o") + 1]
        out.append((plan([argv[0], "-MT", obj, "-MF", obj + ".d", *argv[1:]]), command["directory"]))
    return out


def timed(cache: ScanCache) -> dict[str, list[float]]:
    """Wrap the cache's lookup and store to record their CPU times (ms: user + system, this process)."""
    times: dict[str, list[float]] = {"lookup": [], "store": []}
    for name in times:
        real = getattr(cache, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            started = time.process_time()
            try:
                return _real(*args, **kwargs)
            finally:
                times[_name].append((time.process_time() - started) * 1e3)
        setattr(cache, name, wrapper)
    return times


def one_pass(cache: ScanCache, jobs: list, system: tuple) -> tuple[dict, int]:
    times = timed(cache)
    scanned = []
    env = {"PATH": os.environ["PATH"]}
    for decided, cwd in jobs:
        def scanner(decided=decided, cwd=cwd):
            scanned.append(1)
            return scan(decided, cwd)
        cached_scan(cache, decided, cwd, env, "identity", system, scanner)
    return times, len(scanned)


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ms" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cares", type=Path, help="a c-ares source tree (else the sdist, unpacked)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-scan-cost-") as tmp:
        work = Path(tmp)
        source = args.cares or cares.unpack(cares.fetch(), work)
        build = work / "build"
        cares.configure(source, build, dict(os.environ), (),
                        ("-DCARES_BUILD_TOOLS=ON", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", "-DCMAKE_C_FLAGS=-MD"))
        configured = max(os.stat(p).st_ctime_ns for p in (build, build / "ares_config.h"))
        jobs = jobs_of(build)
        system = system_dirs(jobs[0][0].compiler, jobs[0][0].language)
        just_after = lambda: configured + 500_000_000     # noqa: E731
        later = lambda: time.time_ns() + 10_000_000_000   # noqa: E731

        racy_dir = work / "cache-racy"
        times, scanned = one_pass(ScanCache(str(racy_dir), clock_ns=just_after), jobs, system)
        stored = sum(1 for _ in racy_dir.rglob("*.json"))
        print(f"just after the configure: {stored}/{len(jobs)} stored; store {median(times['store'])} a job")
        cache = ScanCache(str(racy_dir), clock_ns=just_after)
        times, scanned = one_pass(cache, jobs, system)
        print(f"  lookup while racy: {cache.hits} hits, {median(times['lookup'])} a job")
        for label in ("first settled lookup", "settled lookup after it"):
            cache = ScanCache(str(racy_dir), clock_ns=later)
            times, scanned = one_pass(cache, jobs, system)
            print(f"  {label}: {cache.hits} hits, {getattr(cache, 'settled', 0)} rewritten, "
                  f"{median(times['lookup'])} a job")

        plain_dir = work / "cache-settled"
        times, _ = one_pass(ScanCache(str(plain_dir), clock_ns=later), jobs, system)
        entries = list(plain_dir.rglob("*.json"))
        size = statistics.median(p.stat().st_size for p in entries)
        print(f"settled: {len(entries)}/{len(jobs)} stored; store {median(times['store'])} a job; "
              f"entry {size / 1024:.1f} KiB")
        for n in range(args.passes):
            cache = ScanCache(str(plain_dir), clock_ns=later)
            first, _ = one_pass(cache, jobs, system)
            again, _ = one_pass(cache, jobs, system)
            print(f"  lookup, a fresh run: {median(first['lookup'])} a job; the same run again "
                  f"{median(again['lookup'])} ({cache.hits} hits)")


if __name__ == "__main__":
    main()
