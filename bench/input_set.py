"""What a job's ~150 InputFiles cost both ends, and what naming the set by digest would save.

    python bench/input_set.py [--rounds 6] [--passes 3]

Each c-ares compile job's CompileRequest names ~150 files by (path, sha256,
size) (cluster/protocol/compile.proto InputFile, ~20 kB a job). Before
changing the protocol so that a helper keeps a job's input set by digest,
this measures, in-process (thread CPU clock, no gRPC: a unary call of 20 kB
costs what one of 1.5 kB does, see bench/README.md), on the 91 c-ares
compiles (tests/harness/cares.py, configured once and scanned once), sent
round-robin to two helpers (each its own InputStore and reused job root, as
two one-core helpers of a -j4 build), every content already delivered (a
warm-up pass stores them):

- "full": today's code path. Initiator: `Digests.inputs` (cli/job_inputs.py),
  the CompileRequest, its serialization. Helper: parsing it,
  `HelperService._inputs` (agent/helper.py), `JobRoot.lay_out`
  (agent/job_root.py) in the helper's reused root.
- "set": a prototype (here only, not the product) of the best variant found:
  the initiator names as base the set it last sent to that helper and sends
  only the entries that differ (added or changed InputFiles, removed paths);
  the helper rebuilds the job's set from its stored base, names the new set
  by sha256(base name + the delta it received) (a chain: the helper hashes
  what it received, never a client's claim), and lays out only the delta
  when its root holds the base, else the whole set.

Both run the same `Digests.inputs` (its ~150 stats a job stay: they are how
the initiator knows the hashes are current); the figures also split out the
parts each mode has, and the unavoidable links of changed files. Modes
alternate (full, set, set, full, ...), each in a fresh process. No target.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import hashlib, json, os, sys, tempfile, time
from agent.helper import Grants, HelperService
from agent.input_store import InputStore
from agent.job_root import RootPool, inside
from cli.job_inputs import Digests
from cluster.protocol import compile_pb2 as pb

jobs_file, mode, passes = sys.argv[1], sys.argv[2], int(sys.argv[3])
jobs = json.load(open(jobs_file))
tmp = tempfile.mkdtemp(prefix="baton-bench-inputset-")
clock = time.thread_time
digests = Digests(clock_ns=lambda: time.time_ns() + 10 ** 10)   # the c-ares tree is fresh: count it settled
helpers = []
for h in range(2):
    store = InputStore(os.path.join(tmp, f"store{h}"))
    os.makedirs(os.path.join(tmp, f"jobs{h}"))
    pool = RootPool(os.path.join(tmp, f"jobs{h}"))
    helpers.append({"store": store, "service": HelperService(Grants(), lambda: 1, store=store, roots=pool),
                    "root": pool.take(), "sets": {}, "root_set": None,   # the helper's side
                    "sent": None})                                       # the initiator's: (name, {path: (sha, size)})


def request(job, inputs, base=""):
    return pb.CompileRequest(grant="g" * 32, epoch=1, compiler="gcc", compiler_identity="0" * 64, args=job["flags"],
                             source=job["source"], cwd=job["cwd"], system_dirs=job["dirs"], inputs=inputs,
                             locale={"LANG": "C", **({"BATON_SET": base} if base else {})})


def delta_name(base, delta):
    # The chain name of the set base + delta (delta sorted by path: one spelling per content).
    h = hashlib.sha256(base.encode())
    for path, sha, size in sorted(delta):
        h.update(f"{path}\0{sha}\0{size}\n".encode())
    return h.hexdigest()


def full_initiator(job, helper):
    inputs = digests.inputs(job["paths"], lambda d: False)
    return request(job, inputs).SerializeToString(), inputs


def full_helper(body, helper):
    req = pb.CompileRequest()
    req.ParseFromString(body)
    inputs = helper["service"]._inputs(req)
    t = clock()
    helper["root"].lay_out({}, inputs, helper["store"])
    return clock() - t


def set_initiator(job, helper):
    inputs = digests.inputs(job["paths"], lambda d: False)
    now = {f.path: f for f in inputs}
    if helper["sent"] is None:
        name, entries = "", {}
    else:
        name, entries = helper["sent"]
    delta = [f for f in inputs if entries.get(f.path) != (f.sha256, f.size)]
    removed = [pb.InputFile(path=p, size=-1) for p in entries if p not in now]
    body = request(job, delta + removed, name).SerializeToString()
    new = delta_name(name, [(f.path, f.sha256, f.size) for f in delta]
                     + [(f.path, "", -1) for f in removed])
    helper["sent"] = (new, {p: (f.sha256, f.size) for p, f in now.items()})
    return body, inputs


def set_helper(body, helper):
    req = pb.CompileRequest()
    req.ParseFromString(body)
    base = req.locale.get("BATON_SET", "")
    have = dict(helper["sets"][base]) if base else {}
    delta, changed = [], {}
    for f in req.inputs:
        delta.append((f.path, f.sha256, f.size))
        if f.size < 0:
            have.pop(f.path, None)
            changed[f.path] = None
        else:
            have[f.path] = f.sha256
            changed[f.path] = f.sha256
    name = delta_name(base, delta)
    helper["sets"][name] = have
    t = clock()
    root, store = helper["root"], helper["store"]
    if base and helper["root_set"] == base:   # the root holds the base: only the delta moves
        for path, sha in changed.items():
            target = inside(root.root, path)
            if root._files.pop(target, 0) != 0:
                os.unlink(target)
            if sha is not None:
                root._parent(target)
                os.link(store.path(sha), target)
                root._files[target] = sha
    else:
        root.lay_out({}, have, store)
    helper["root_set"] = name
    return clock() - t


initiator, helper_side = (full_initiator, full_helper) if mode == "full" else (set_initiator, set_helper)
for i, job in enumerate(jobs):   # warm-up: every content stored, the full list (no set known yet)
    helper = helpers[i % 2]
    req = request(job, digests.inputs(job["paths"], lambda d: True))
    for f in req.inputs:
        helper["store"].put(f.sha256, f.content)
    full_helper(req.SerializeToString(), helper)
parts = {"initiator": 0.0, "helper": 0.0, "of which layout": 0.0}
size = n = 0
for _ in range(passes):
    for i, job in enumerate(jobs):
        helper = helpers[i % 2]
        t0 = clock()
        body, inputs = initiator(job, helper)
        t1 = clock()
        layout = helper_side(body, helper)
        t2 = clock()
        root = helper["root"]   # both modes must leave exactly the job's files in the root
        assert root._files == {root.root + f.path: f.sha256 for f in inputs}, job["source"]
        parts["initiator"] += t1 - t0
        parts["helper"] += t2 - t1
        parts["of which layout"] += layout
        size += len(body)
        n += 1
print(json.dumps({"per_job_ms": {k: v / n * 1000 for k, v in parts.items()}, "request_bytes": size / n}))
"""


def prepare(work: Path) -> Path:
    """c-ares configured with -MD, each compile planned and scanned once: its input paths."""
    sys.path.insert(0, str(ROOT))
    from cli.cc_args import plan
    from cli.compile_scan import input_paths, scan, system_dirs
    from tests.harness import cares

    source = cares.unpack(cares.sdist() or cares.fetch(work), work)
    build = work / "build"
    cares.configure(source, build, dict(os.environ), (), ("-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", "-DCMAKE_C_FLAGS=-MD"))
    jobs = []
    for command in json.loads((build / "compile_commands.json").read_text()):
        decided = plan(shlex.split(command["command"]))
        if not hasattr(decided, "flags"):
            continue
        cwd = os.path.abspath(command["directory"])
        jobs.append({"flags": list(decided.flags), "source": decided.source, "cwd": cwd,
                     "dirs": list(system_dirs(decided.compiler, decided.language)),
                     "paths": input_paths(decided, cwd, scan(decided, cwd))})
    out = work / "jobs.json"
    out.write_text(json.dumps(jobs))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="processes per mode, alternating")
    parser.add_argument("--passes", type=int, default=3, help="measured passes over the jobs a process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-inputset-") as tmp:
        jobs = prepare(Path(tmp))
        print(f"{len(json.loads(jobs.read_text()))} jobs", flush=True)
        results: dict[str, list[dict]] = {"full": [], "set": []}
        for r in range(args.rounds):
            for mode in (("full", "set") if r % 2 == 0 else ("set", "full")):
                done = subprocess.run([sys.executable, "-c", CHILD, str(jobs), mode, str(args.passes)],
                                      env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                                      check=True, cwd=tmp)
                figures = json.loads(done.stdout.splitlines()[-1])
                results[mode].append(figures)
                ms = figures["per_job_ms"]
                print(f"round {r + 1} {mode:4}: initiator {ms['initiator']:.3f}, helper {ms['helper']:.3f} "
                      f"(layout {ms['of which layout']:.3f}), sum {ms['initiator'] + ms['helper']:.3f} ms a job; "
                      f"request {figures['request_bytes']:.0f} B (load {os.getloadavg()[0]:.1f})", flush=True)
        print("medians (ms a job):")
        for mode, rounds in results.items():
            med = {k: statistics.median(f["per_job_ms"][k] for f in rounds) for k in rounds[0]["per_job_ms"]}
            total = statistics.median(f["per_job_ms"]["initiator"] + f["per_job_ms"]["helper"] for f in rounds)
            print(f"  {mode:4}: initiator {med['initiator']:.3f}, helper {med['helper']:.3f} "
                  f"(layout {med['of which layout']:.3f}), sum {total:.3f}; "
                  f"request {statistics.median(f['request_bytes'] for f in rounds):.0f} B (n={len(rounds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
