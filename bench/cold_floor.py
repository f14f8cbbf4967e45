"""How close to local can a cold build with helpers get, on one machine's shared cores?

    python bench/cold_floor.py [--passes 2] [--cares DIR] [--json]

A cold build (nothing in the scan cache, cli/scan_cache.py) runs each
compile's preprocessor twice: the initiator's scan for the headers and the
.d file (cli/compile_scan.py, `-M -H`), then the helper's compile of the
source. distcc's plain mode preprocesses once (`-E` on the initiator) and the
helper compiles the preprocessed text; icecream preprocesses with
`-E -fdirectives-only` and the helper compiles that with `-fpreprocessed
-fdirectives-only`. Where helpers share the initiator's cores, as here, the
CPU each way needs is its floor: no scheduling, network or Python can make
a build cheaper than the compiler processes it must run.

On every c-ares compile (-O2 -g, tests/harness/cares.py), one after another,
each method's compiler processes are run --passes times, methods alternating
per file, and their CPU (user + system of the waited children) summed:

- local: the compile as CMake wrote it;
- Baton, cold: Baton's scan (the same argv cli.cc_args.RemotePlan.scan_argv
  gives) + the compile as written (what the helper runs, on the same paths);
- distcc: `-E` to a file + the compile of that file (`-D`/`-I` dropped, as
  distcc drops them);
- icecream: `-E -fdirectives-only` + `-fpreprocessed -fdirectives-only`.

Prints each method's CPU and its ratio to local, and how many objects of
the distcc and icecream ways are byte-identical to local ones, with the
debug-info attributes that differ (issue 14 asks for identical objects:
docs/design.md section 8). Exits 0; it measures, it does not judge.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.cc_args import RemotePlan, plan  # noqa: E402
from tests.harness import cares  # noqa: E402

_OFFSET = re.compile(r"<[0-9a-f]+>|offset: 0x[0-9a-f]+|\(indirect [a-z ]+string, \)")


def children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def cpu_of(argv: list[str], cwd: str) -> float:
    before = children_cpu()
    subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return children_cpu() - before


def without_output(argv: list[str]) -> list[str]:
    """argv without its -o FILE and -c (for -E)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "-o":
            skip = True
        elif arg != "-c":
            out.append(arg)
    return out


def compile_of(argv: list[str], source: str, obj: str, preprocessed: str, extra: list[str]) -> list[str]:
    """The helper's compile of `preprocessed` into `obj`: the flags as written, minus the
    preprocessor's (-D, -I: as distcc drops them) and the source."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-D", "-I", "-o"):
            skip = True
            continue
        if arg.startswith(("-D", "-I")) or arg == source:
            continue
        out.append(arg)
    return [*out, *extra, "-o", obj, preprocessed]


def debug_differences(ours: str, theirs: str) -> set[str]:
    """The names of the DWARF attributes whose values differ, string offsets ignored."""
    def attributes(path: str) -> list[str]:
        text = subprocess.run(["readelf", "--debug-dump=info", path], capture_output=True, text=True).stdout
        return [_OFFSET.sub("", line).strip() for line in text.splitlines() if "DW_AT_" in line]
    names = set()
    for a, b in zip(attributes(ours), attributes(theirs)):
        if a != b:
            names.add(a.split()[0])
    return names


def measure(build: Path, passes: int, work: Path) -> dict:
    commands = json.loads((build / "compile_commands.json").read_text())
    cpu: dict[str, float] = collections.defaultdict(float)
    same: dict[str, int] = collections.Counter()
    differ: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    jobs = 0
    for command in commands:
        argv = shlex.split(command["command"])
        decided = plan(argv)
        if not isinstance(decided, RemotePlan):
            continue
        jobs += 1
        cwd = command["directory"]
        local_obj = str(work / "local.o")
        local = [*without_output(argv), "-c", "-o", local_obj]
        ways = {
            "distcc": ([*without_output(argv), "-E", "-o", str(work / "x.i")],
                       compile_of(argv, decided.source, str(work / "distcc.o"), str(work / "x.i"), [])),
            "icecream": ([*without_output(argv), "-E", "-fdirectives-only", "-o", str(work / "y.i")],
                         compile_of(argv, decided.source, str(work / "icecream.o"), str(work / "y.i"),
                                    ["-fpreprocessed", "-fdirectives-only"])),
        }
        for _ in range(passes):
            cpu["local"] += cpu_of(local, cwd)
            cpu["Baton scan"] += cpu_of(decided.scan_argv(), cwd)
            for name, (preprocess, compile_) in ways.items():
                cpu[f"{name} preprocess"] += cpu_of(preprocess, cwd)
                cpu[f"{name} compile"] += cpu_of(compile_, cwd)
        want = Path(local_obj).read_bytes()
        for name in ways:
            obj = str(work / f"{name}.o")
            if Path(obj).read_bytes() == want:
                same[name] += 1
            else:
                differ[name].update(debug_differences(local_obj, obj) or {"(not in debug info)"})
    per = {k: v / passes for k, v in cpu.items()}
    floors = {
        "local": per["local"],
        "Baton, cold (scan + compile)": per["Baton scan"] + per["local"],
        "Baton, warm (compile; scan from the cache)": per["local"],
        "distcc (-E + compile .i)": per["distcc preprocess"] + per["distcc compile"],
        "icecream (-E -fdirectives-only + compile)": per["icecream preprocess"] + per["icecream compile"],
    }
    return {"jobs": jobs, "parts_cpu_s": per, "floors_cpu_s": floors,
            "identical": {name: same[name] for name in ("distcc", "icecream")},
            "differing_attributes": {name: dict(c.most_common(4)) for name, c in differ.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--cares", default=None, help="a c-ares source tree (default: from pycares' sdist)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-cold-floor-") as tmp:
        work = Path(tmp)
        source = Path(args.cares) if args.cares else cares.unpack(cares.sdist() or cares.fetch(work), work)
        build = work / "build"
        subprocess.run(["cmake", "-S", str(source), "-B", str(build), *cares.CMAKE_OPTIONS,
                        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], check=True, capture_output=True)
        result = measure(build, args.passes, work)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    local = result["floors_cpu_s"]["local"]
    print(f"c-ares, {result['jobs']} compiles, compiler processes' CPU per build (mean of {args.passes} passes)")
    for name, value in result["parts_cpu_s"].items():
        print(f"  {name:<44} {value:6.2f} CPU-s")
    print("floors: the compiler processes each way must run")
    for name, value in result["floors_cpu_s"].items():
        print(f"  {name:<44} {value:6.2f} CPU-s  x{value / local:.2f} of local")
    cold = result["floors_cpu_s"]["Baton, cold (scan + compile)"]
    print(f"  Baton cold / distcc: x{cold / result['floors_cpu_s']['distcc (-E + compile .i)']:.2f}")
    for name, count in result["identical"].items():
        print(f"  {name}: {count} of {result['jobs']} objects byte-identical to local; differing: "
              f"{result['differing_attributes'].get(name, {})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
