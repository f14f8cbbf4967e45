"""What a compile job costs a helper agent's process in CPU, old tree against new.

    python -m bench.helper_cpu [--old REF] [--pairs 3] [--passes 2] [--cares DIR] [--json]

On a 2-core machine the helper agents share the cores with the build, so
every CPU-ms of the agent's own Python and of setting up the compiler's
process is taken from the compiles. Here a Helper service (agent/helper.py:
HelperServer, the agent's own, with a lent grant of one slot) runs in a
process of its own from a source tree, and this process sends it the 94
c-ares compiles (-O2 -g -MD, CMake + Ninja) over real gRPC, one at a time,
as `baton run`'s job server does (inputs by hash, contents only when the
helper's store lacks them: a warm-up pass fills it, as in a warm build).
Measured from /proc/<pid>/stat of the helper's process over the measured
passes, per job:

- the agent's own CPU (utime + stime, its threads, not its children);
- its waited children's CPU (cutime + cstime: the compiler processes with
  whatever starts them), against the same compiles run directly from this
  process in the c-ares build directory (getrusage of the children), each
  right after its helper job, so a change of the machine's load hits both;
- the wall of a job as the client sees it.

The old tree is `git archive REF` (default: main) unpacked in a temporary
directory; the new one is this repository. Old and new alternate (old,
new, new, old, ...), each run in a fresh helper process, `--pairs` of them. As root, the helper compiles as nobody
(what it does in a real root agent); the work directory is made reachable.
Prints the figures and the new/old ratios; no target (exit 0).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from agent.compile_job import compiler_identity  # noqa: E402
from cli.cc_args import RemotePlan, plan  # noqa: E402
from cli.compile_scan import input_paths, scan, system_dirs  # noqa: E402
from cli.job_inputs import Digests  # noqa: E402
from cluster.protocol import compile_pb2 as pb  # noqa: E402
from cluster.protocol import compile_pb2_grpc  # noqa: E402
from tests.harness import cares  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
GRANT = "bench-grant"
# The helper's process: a HelperServer as agent/core.py makes it for a one-core agent
# (cores + 4 threads), a grant of one slot lent; prints its port, serves until stdin closes.
SERVE = f"""
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from agent.helper import Grants, HelperServer
grants = Grants()
grants.lend({GRANT!r}, 1, 1)
server = HelperServer("127.0.0.1:0", grants, lambda: 1, workers=5, workdir=sys.argv[1])
print(server.start(), flush=True)
sys.stdin.read()
server.stop()
"""


def proc_cpu(pid: int) -> tuple[float, float]:
    """(the process's own user + system CPU s, its waited children's), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU s of each thread of the process by thread name (digits dropped: a pool's threads together)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except FileNotFoundError:
            continue
        name = re.sub(r"[0-9_-]+$", "", head.split("(", 1)[1]) or "?"
        fields = rest.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def prepare(workdir: Path, source: Path | None) -> tuple[list[list[str]], list[str], list[pb.CompileRequest]]:
    """c-ares configured; (argvs, cwds, requests without contents) of its remote compiles."""
    source = source or cares.unpack(cares.sdist() or cares.fetch(workdir), workdir)
    build = workdir / "build"
    cares.configure(source, build, dict(os.environ), (),
                    ("-DCARES_BUILD_TOOLS=ON", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", "-DCMAKE_C_FLAGS=-MD"))
    digests = Digests(clock_ns=lambda: time.time_ns() + 10 ** 12)   # configure's files count as settled
    argvs, cwds, requests, identities = [], [], [], {}
    for command in json.loads((build / "compile_commands.json").read_text()):
        argv = shlex.split(command["command"])
        decided = plan(argv)
        if not isinstance(decided, RemotePlan):
            continue
        cwd = command["directory"]
        paths = input_paths(decided, cwd, scan(decided, cwd))
        if decided.compiler not in identities:
            identities[decided.compiler] = compiler_identity(decided.compiler)
        requests.append(pb.CompileRequest(
            grant=GRANT, epoch=1, compiler=os.path.basename(decided.compiler),
            compiler_identity=identities[decided.compiler], args=decided.flags, source=decided.source,
            cwd=os.path.abspath(cwd), system_dirs=system_dirs(decided.compiler, decided.language),
            inputs=digests.inputs(paths, lambda d: False), locale={"LANG": "C"}))
        argvs.append(argv)
        cwds.append(cwd)
    return argvs, cwds, requests


def with_contents(request: pb.CompileRequest, missing: set[str]) -> pb.CompileRequest:
    again = pb.CompileRequest()
    again.CopyFrom(request)
    for f in again.inputs:
        if f.sha256 in missing:
            f.content = Path(f.path).read_bytes()
    return again


def send_all(stub, requests: list[pb.CompileRequest], argvs: list[list[str]] | None = None,
             cwds: list[str] | None = None) -> tuple[list[float], float]:
    """Each job through the helper, then (with argvs) the same compile directly from here, job by
    job, so a change of load hits both alike; (the helper's walls, the direct compiles' CPU s)."""
    walls, direct_cpu = [], 0.0
    for i, request in enumerate(requests):
        started = time.perf_counter()
        reply = stub.Compile(request, timeout=120)
        if reply.missing:
            reply = stub.Compile(with_contents(request, set(reply.missing)), timeout=120)
        walls.append(time.perf_counter() - started)
        if reply.refused or reply.missing or reply.exit_code != 0 or not reply.object:
            raise RuntimeError(f"{request.source}: refused {reply.refused!r}, missing {len(reply.missing)}, "
                               f"exit {reply.exit_code}: {reply.diagnostics[-500:]!r}")
        if argvs is not None:
            before = children_cpu()
            subprocess.run(argvs[i], cwd=cwds[i], check=True, capture_output=True)
            direct_cpu += children_cpu() - before
    return walls, direct_cpu


def run_helper(tree: Path, workdir: Path, requests: list[pb.CompileRequest], argvs: list[list[str]], cwds: list[str],
               passes: int) -> dict:
    agent_dir = tempfile.mkdtemp(prefix="agent-", dir=workdir)
    os.chmod(agent_dir, 0o711)
    env = dict(os.environ, PYTHONPATH=str(tree))
    with open(workdir / "helper.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, agent_dir], cwd=tree, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 80 << 20),
                                                                ("grpc.max_send_message_length", 80 << 20)]) as ch:
            stub = compile_pb2_grpc.HelperStub(ch)
            send_all(stub, requests)   # warm-up: the store gets every content, the roots exist
            own0, kids0 = proc_cpu(proc.pid)
            threads0 = thread_cpu(proc.pid)
            walls, direct_cpu = [], 0.0
            for _ in range(passes):
                own_walls, own_direct = send_all(stub, requests, argvs, cwds)
                walls += own_walls
                direct_cpu += own_direct
            own1, kids1 = proc_cpu(proc.pid)
            threads1 = thread_cpu(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    jobs = passes * len(requests)
    return {"agent_ms": (own1 - own0) / jobs * 1e3, "children_ms": (kids1 - kids0) / jobs * 1e3,
            "direct_ms": direct_cpu / jobs * 1e3, "wall_ms": statistics.median(walls) * 1e3,
            "threads_ms": {name: round((cpu - threads0.get(name, 0.0)) / jobs * 1e3, 3)
                           for name, cpu in threads1.items() if cpu - threads0.get(name, 0.0) > 0}}


def old_tree(ref: str, workdir: Path) -> Path:
    into = workdir / "old"
    into.mkdir()
    archive = workdir / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="main", help="the git ref of the old tree (default: main)")
    parser.add_argument("--pairs", type=int, default=3, help="old/new pairs, alternating")
    parser.add_argument("--passes", type=int, default=2, help="measured passes of the 94 jobs per run")
    parser.add_argument("--cares", default=None, help="a c-ares source tree (default: from pycares' sdist)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-helper-cpu-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o711)   # a root helper compiles as nobody, who must reach the job roots
        trees = {"old": old_tree(args.old, workdir), "new": ROOT}
        argvs, cwds, requests = prepare(workdir, Path(args.cares) if args.cares else None)
        print(f"{len(requests)} c-ares compiles; old = {args.old}, new = {ROOT}; load {os.getloadavg()[0]:.2f}")
        runs = []
        order = [name for i in range(args.pairs) for name in (("old", "new") if i % 2 == 0 else ("new", "old"))]
        for name in order:
            figures = run_helper(trees[name], workdir, requests, argvs, cwds, args.passes)
            figures.update(tree=name, load=os.getloadavg()[0])
            runs.append(figures)
            print(f"  {name}: agent {figures['agent_ms']:.2f} ms/job, compiler processes "
                  f"{figures['children_ms']:.1f} ms/job (direct {figures['direct_ms']:.1f}, "
                  f"+{figures['children_ms'] - figures['direct_ms']:.1f}), wall median {figures['wall_ms']:.1f} ms, "
                  f"load {figures['load']:.2f}", flush=True)
            print("    threads (ms/job): " + ", ".join(f"{n} {v:.2f}" for n, v in sorted(
                figures["threads_ms"].items(), key=lambda kv: -kv[1])), flush=True)
        summary = {}
        for name in ("old", "new"):
            mine = [r for r in runs if r["tree"] == name]
            summary[name] = {key: statistics.median(r[key] for r in mine)
                             for key in ("agent_ms", "children_ms", "direct_ms", "wall_ms")}
            summary[name]["extra_ms"] = statistics.median(r["children_ms"] - r["direct_ms"] for r in mine)
        for key, label in (("agent_ms", "agent's own CPU"), ("children_ms", "compiler processes' CPU"),
                           ("direct_ms", "the same compiles directly"),
                           ("extra_ms", "compiler processes above direct"), ("wall_ms", "job wall (client)")):
            old, new = summary["old"][key], summary["new"][key]
            print(f"{label}: old {old:.2f} ms/job, new {new:.2f} ms/job (new - old {new - old:+.2f} ms)")
        if args.json:
            print(json.dumps({"runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
