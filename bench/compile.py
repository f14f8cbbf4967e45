"""What does Baton's compile path cost, on a real project?

    python bench/compile.py [--runs 30] [--jobs 2] [--remote-jobs N] [--repeat 1] [--cares DIR] [--cluster]
                            [--wrapper both|native|python] [--builds-only] [--no-scanned] [--json]

The project is c-ares (its sources ship in the PyPI sdist of pycares,
deps/c-ares; fetched with `pip download` unless --cares names a tree),
configured with CMake and Ninja. Measured, side by side in one run:

Each `baton run` figure is taken with each compiler wrapper of --wrapper
(default both, side by side): the native one (cli/native/baton_cc.c, what
`baton run` installs where a C compiler builds it) and the Python one
(cli/cc.py, BATON_CC_NATIVE=0).

1. `baton cc` start-up: a tiny compile through each wrapper outside
   `baton run` (it finds and execs the compiler), inside it with no helper
   socket (the argument rules and a job record), and inside it asking a job
   server that answers "compile it locally" (cli/ccwire.py over a real unix
   socket), against the compiler called directly; median and p99 wall of
   --runs, and the CPU (user + system) a run costs, wrapper and compiler.
2. The remote path's parts on every c-ares compile (-O2 -g -MD): the local
   compile; the initiator's scan (cli/compile_scan.py), its naming of the
   files by the include lines instead (cli/include_scan.py, as in a
   `baton run`'s first build) and hashing of those inputs (cli/job_inputs.py,
   stat-cached across jobs as in `baton run`); the helper's layout of the
   job root from its input store (hard links) and its compile with the
   dependency flags (agent/compile_job.py, in-process, no network); how many
   objects and .d files (the scan's and the helper's) are byte-identical to
   local ones.
3. Whole builds: `cmake --build -jN` locally, under `baton run --local-only`
   (the wrapper's overhead on a real build), with --cluster under
   `baton run` on a local cluster (cli.local.LocalCluster: etcd, one
   coordinator, two agents of one core each serving compile jobs), and with
   distcc when it is installed (Debian's distcc/distccd on loopback, plain
   mode, two slots; "distcc: not installed, not measured" otherwise); the
   ratios to local and of Baton to distcc. Every build runs between two
   local builds (cleaned and built again in a tree of their own) and its
   ratios are to their mean: this VM's speed moves by a quarter from minute
   to minute, and a ratio to builds of the same minutes cancels most of
   it (the median of --repeat such ratios is printed). The build with helpers runs twice
   a round: first with an empty scan cache (cold), then cleaned and built
   again in the same tree (warm: cli/scan_cache.py); then twice more with
   BATON_INCLUDE_SCAN=0 (every job scanned by the preprocessor, cold then
   warm, not named by its include lines: cli/include_scan.py; --no-scanned
   leaves these two out). Each round starts one variant later than the last
   (a build and its build again stay together), and Baton's ratio to distcc
   is listed round by round; then a round's builds with helpers together
   (first and again, their mean) over its distcc build, as the geometric mean
   over the rounds with two standard errors: one round moves by +-10 %, so
   "at or below distcc" is read from that range, not from a round. For a build with helpers, the job records also
   say how much of its span each helper core held a job (the last round's). On one machine the helpers share
   its cores, so the figure is the remote path's overhead, not a speed-up; each
   build's CPU-seconds over the whole machine (/proc/stat) are printed too, a
   steadier figure of that overhead than walls on a loaded machine.
4. Per-job overhead: every c-ares compile run directly and then through the
   wrapper, one at a time, under `baton run --local-only` and (--cluster)
   `baton run` with the helpers: wrapper start to object written, minus the
   direct compile; median and p99.

Prints figures and ratios; exits 1 only if an object differs.

Over 400 lines: the four measurements share one c-ares tree, one cluster and
the same wrapper set-up, and each is a few small functions; split, every part
would take the same half-dozen arguments across module lines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.compile_job import CompileJob, run_compile  # noqa: E402
from agent.input_store import InputStore  # noqa: E402
from agent.job_root import RootPool  # noqa: E402
from cli.cc_args import RemotePlan, plan  # noqa: E402
from cli.compile_scan import Scan, input_paths, scan, system_dirs  # noqa: E402
from cli.include_scan import IncludeScan  # noqa: E402
from cli.job_inputs import Digests  # noqa: E402
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


def configure(source: Path, build: Path, env: dict, runner: list[str], extra: list[str] = ()) -> None:
    # With c-ares' tools, as the figures in the notes were measured.
    cares.configure(source, build, env, tuple(runner),
                    ("-DCARES_BUILD_TOOLS=ON", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", "-DCMAKE_C_FLAGS=-MD", *extra))


class LocalAnswers:
    """A `baton run` job server that answers every job "compile it locally" (cli/ccwire.py)."""

    def __init__(self, run_dir: Path):
        import threading

        from cli import ccwire

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(run_dir / ccwire.SOCKET))
        self.sock.listen(16)

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    ccwire.receive(conn)
                    ccwire.send(conn, {"local": "the bench says so"})

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


def machine_cpu() -> tuple[float, float]:
    """CPU-seconds every process of this machine has used (/proc/stat: user, nice, system, irq,
    softirq, steal), and of them steal (the VM's host running others): a build's delta is what it
    cost the machine, helpers, coordinator and distccd included. On two shared cores that, more
    than one noisy wall, is the overhead."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup(runs: int, workdir: Path, env: dict, kinds: list[str]) -> list[dict]:
    print("1. baton cc start-up (a tiny compile, -c, no optimisation): wall, and CPU of wrapper + compiler")
    tiny = workdir / "tiny.c"
    tiny.write_text("int tiny(void) { return 1; }\n")
    variants = [("gcc directly", ["gcc"], {})]
    servers = []
    for kind in kinds:
        wrappers = install_wrappers(str(workdir / f"wrappers-{kind}"), native=kind == "native")
        wrapper = os.path.join(wrappers, "gcc")
        bare, asking = workdir / f"run-{kind}", workdir / f"run-{kind}-server"
        bare.mkdir(exist_ok=True)
        asking.mkdir(exist_ok=True)
        servers.append(LocalAnswers(asking))
        variants += [(f"{kind}: outside baton run", [wrapper], {}),
                     (f"{kind}: inside, no helper socket", [wrapper], {"BATON_RUN_DIR": str(bare)}),
                     (f"{kind}: inside, answered \"local\"", [wrapper], {"BATON_RUN_DIR": str(asking)})]
    walls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    cpu: dict[str, float] = {name: 0.0 for name, _, _ in variants}
    try:
        for _ in range(runs):
            for name, argv, extra in variants:
                run_env = dict(env, **extra)
                if argv[0] != "gcc":
                    run_env.update(BATON_WRAPPER_DIR=os.path.dirname(argv[0]),
                                   PATH=os.path.dirname(argv[0]) + os.pathsep + env["PATH"])
                used, started = children_cpu(), time.perf_counter()
                subprocess.run([*argv, "-c", str(tiny), "-o", str(workdir / "tiny.o")], env=run_env, check=True)
                walls[name].append(time.perf_counter() - started)
                cpu[name] += children_cpu() - used
    finally:
        for server in servers:
            server.close()
    out = []
    for name, _, _ in variants:
        figures = row(name, walls[name], None if name == "gcc directly" else walls["gcc directly"])
        figures["cpu_ms"] = cpu[name] / runs * 1000
        print(f"  {'':<44} CPU {figures['cpu_ms']:6.1f} ms a run "
              f"(x{cpu[name] / max(cpu['gcc directly'], 1e-9):.2f} of direct)")
        out.append(figures)
    return out


def halves(build: Path) -> tuple[list[dict], int]:
    print("2. the remote path's parts on each c-ares compile (helper in-process, no network)")
    commands = json.loads((build / "compile_commands.json").read_text())
    local, scanned, by_lines, hashed, layout, helper, different = [], [], [], [], [], [], 0
    digests = Digests()
    includes = IncludeScan(digests.hashes)
    with tempfile.TemporaryDirectory(prefix="baton-bench-store-") as tmp:
        store = InputStore(os.path.join(tmp, "store"))
        roots = RootPool(tmp)
        layout_root = RootPool(tmp).take()
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
            input_paths(decided, cwd, scan(decided, cwd))
            scanned.append(time.perf_counter() - started)
            started = time.perf_counter()   # what `baton run` does first (the first build of a run)
            named = includes.files(decided, cwd, dict(os.environ), system_dirs(decided.compiler, decided.language), {})
            paths = input_paths(decided, cwd, Scan(headers=tuple(named[1:])))
            by_lines.append(time.perf_counter() - started)
            started = time.perf_counter()
            inputs = digests.inputs(paths, lambda d: store.path(d) is None)
            hashed.append(time.perf_counter() - started)
            for f in inputs:
                if f.content:
                    store.put(f.sha256, f.content)
            job = CompileJob(args=decided.flags, source=decided.source, cwd=os.path.abspath(cwd), files={},
                             system_dirs=system_dirs(decided.compiler, decided.language),
                             inputs={f.path: f.sha256 for f in inputs}, dep_flags=decided.dep_flags)
            started = time.perf_counter()
            layout_root.lay_out(job.files, job.inputs, store)   # as a helper's reused root does
            layout.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = run_compile(argv[0], job, store=store, roots=roots)
            helper.append(time.perf_counter() - started)
            if result.object != want_obj or result.depfile != want_dep or Path(dep).read_bytes() != want_dep:
                different += 1
    rows = [row("local compile", local), row("initiator: scan (writes the .d)", scanned, local),
            row("initiator: the files by include lines (first build)", by_lines, local),
            row("initiator: hash inputs (stat-cached)", hashed, local),
            row("helper: lay out the job root (reused; links)", layout, local),
            row("helper: lay out + compile (writes the .d)", helper, local)]
    print(f"  objects and .d files (the scan's, the helper's) byte-identical to local: {len(local) - different} of {len(local)}")
    return rows, different


def probe(build: str, out: str) -> int:
    """Under `baton run`: each c-ares compile directly, then through the wrapper, one at a time
    (`--probe`, run by per_job()); writes the pairs and the run's job records to `out`."""
    wrapper = os.path.join(os.environ["BATON_WRAPPER_DIR"], "cc")
    pairs = []
    for command in json.loads((Path(build) / "compile_commands.json").read_text()):
        argv = shlex.split(command["command"])
        if not isinstance(plan(argv), RemotePlan):
            continue
        timed = []
        for variant in (argv, [wrapper, *argv[1:]]):
            started = time.perf_counter()
            subprocess.run(variant, cwd=command["directory"], check=True, capture_output=True,
                           env=dict(os.environ) if variant is not argv else {
                               k: v for k, v in os.environ.items() if not k.startswith("BATON_")})
            timed.append(time.perf_counter() - started)
        pairs.append(timed)
    jobs = [json.loads(line) for line in Path(os.environ["BATON_RUN_DIR"], "jobs.jsonl").read_text().splitlines()]
    Path(out).write_text(json.dumps({"pairs": pairs, "jobs": jobs}))
    return 0


def per_job(build: Path, workdir: Path, variants: list[tuple[str, list[str], dict]]) -> list[dict]:
    """Per-job overhead: wrapper start to object written, minus the same compile run directly."""
    print("4. per-job overhead, one compile at a time (wrapper wall - direct compile wall)")
    out = []
    for name, runner, env in variants:
        result = workdir / "probe.json"
        subprocess.run([*[r for r in runner if r != "--json"], sys.executable, str(Path(__file__).resolve()),
                        "--probe", str(build), str(result)], check=True, env=env, capture_output=True)
        figures = json.loads(result.read_text())
        remote = [j["helper"] != "local" for j in figures["jobs"]]
        pairs = figures["pairs"]
        if any(remote):
            pairs = [p for p, r in zip(pairs, remote) if r]
        overhead = [wrapped - direct for direct, wrapped in pairs]
        out.append(row(f"{name} ({sum(remote)}/{len(remote)} remote)", overhead))
    return out


class Distcc:
    """Debian's distccd on loopback, plain mode, `slots` jobs: the figure Baton is held against."""

    def __init__(self, workdir: Path, slots: int):
        self.dir, self.slots = workdir / "distcc", slots
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def installed() -> bool:
        return bool(shutil.which("distcc") and shutil.which("distccd"))

    def start(self) -> "Distcc":
        (self.dir / "client").mkdir(parents=True)
        os.chmod(self.dir, 0o777)   # distccd started as root logs as the distcc user
        self.proc = subprocess.Popen(
            ["distccd", "--daemon", "--no-detach", "--allow", "127.0.0.1", "--listen", "127.0.0.1",
             "--port", str(self.port), "--jobs", str(self.slots), "--log-file", str(self.log),
             "--log-level", "info"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("distccd did not start") from None
                time.sleep(0.05)

    @property
    def log(self) -> Path:
        return self.dir / "distccd.log"

    def env(self, env: dict) -> dict:
        return dict(env, DISTCC_HOSTS=f"127.0.0.1:{self.port}/{self.slots}", DISTCC_DIR=str(self.dir / "client"))

    def compiled(self) -> int:
        return self.log.read_text(errors="replace").count("COMPILE_OK") if self.log.exists() else 0

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # distccd and the workers it forked
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WARM = "baton run, 2 helpers, warm scan cache"
DISTCC = "distcc, 2 slots on loopback"


def wrapper_env(env: dict, workdir: Path, kind: str) -> dict:
    """`env` for `baton run` with the `kind` compiler wrapper (each kind its own wrapper directory)."""
    return dict(env, BATON_WRAPPER_DIR=str(workdir / f"wrappers-{kind}"),
                BATON_CC_NATIVE="1" if kind == "native" else "0")


def build_once(runner: list[str], build: Path, parallel: int, env: dict) -> tuple[float, float, float, str]:
    """One `cmake --build` under `runner`: wall, the machine's CPU and its steal in that time, stdout."""
    started, (cpu, steal) = time.perf_counter(), machine_cpu()
    done = subprocess.run([*runner, "cmake", "--build", str(build), f"-j{parallel}"], check=True,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after, steal_after = machine_cpu()
    return wall, cpu_after - cpu, steal_after - steal, done.stdout


def cores_held(cluster, build_id: str) -> str:
    """How much of the build the helpers' cores held a job: for each core (agent, slot), the sum of
    its jobs' time on it (the job records' core_started..core_finished) over the span from its
    first job's start to its last one's end. Near 100 %: the jobs reach the helpers as fast as
    they compile, and what the build pays is the CPU Baton's processes take from the cores."""
    from cluster.records import JobRecord

    lanes: dict[tuple, list] = {}
    for value, _ in cluster.etcd().get_prefix(cluster.keys.build_jobs(build_id)):
        job = JobRecord.parse(value)
        if job is not None and job.remote and job.core_started is not None:
            lanes.setdefault((job.helper, job.core), []).append((job.core_started, job.core_finished))
    held = []
    for spans in lanes.values():
        span = max(end for _, end in spans) - min(start for start, _ in spans)
        held.append(100 * sum(end - start for start, end in spans) / span if span > 0 else 100.0)
    return f"cores held {min(held):.1f}-{max(held):.1f} %" if held else "no core times recorded"


def builds(source: Path, workdir: Path, env: dict, jobs: int, cluster=None, repeat: int = 1,
           remote_jobs: int | None = None, kinds: tuple[str, ...] = ("native", "python"),
           scanned: bool = True) -> list[dict]:
    """Each variant's build between two local builds: its ratios are to the mean of those two, so
    the machine's own speed, which moves by a quarter from minute to minute on this VM (the
    same compiles' CPU-seconds), moves both sides of a ratio alike. The variants run in groups (a
    build and its build again stay together), and each round starts one group later than the
    last, so that no variant always follows the same one (a build right after a heavy one, or
    always a round's first, would carry that place in every ratio)."""
    remote_jobs = remote_jobs or jobs
    print(f"3. whole builds of c-ares, cmake --build -j{jobs} (-j{remote_jobs} with helpers or distcc), "
          f"median of {repeat}; each build's ratio is to the local builds just before and after it")
    run = [sys.executable, "-m", "cli", "run"]
    groups = []
    for kind in kinds:
        kind_env = wrapper_env(env, workdir.parent, kind)
        groups.append([(f"baton run --local-only [{kind}]", [*run, "--local-only", "--"], kind_env)])
        if cluster is not None:
            groups.append([(f"baton run, 2 one-core helpers [{kind}]",
                            [*run, "--json", *farm_options(cluster), "--"], kind_env),
                           # The same build tree cleaned and built again: every scan from the cache
                           # (cli/scan_cache.py).
                           (f"{WARM} [{kind}]", [*run, "--json", *farm_options(cluster), "--"], kind_env)])
            if scanned:
                # Each job scanned by the preprocessor, not named by its include lines
                # (cli/include_scan.py): cold, then warm (the cache), as every build was before them.
                scanned_env = dict(kind_env, BATON_INCLUDE_SCAN="0")
                groups.append([(f"baton run, 2 helpers, scanned, cold [{kind}]",
                                [*run, "--json", *farm_options(cluster), "--"], scanned_env),
                               (f"{WARM}, scanned [{kind}]", [*run, "--json", *farm_options(cluster), "--"],
                                scanned_env)])
    distcc = None
    if Distcc.installed():
        distcc = Distcc(workdir, 2).start()
        groups.append([(DISTCC, [], distcc.env(env))])
    measured: dict[str, list[dict]] = {name: [] for name in ["local", *(v[0] for g in groups for v in g)]}
    remote: dict[str, str] = {}
    try:
        build = workdir
        for round_ in range(repeat):
            local_tree = workdir / f"local-{round_}"
            configure(source, local_tree, env, [])

            def local() -> dict:
                wall, cpu, steal, _ = build_once([], local_tree, jobs, env)
                subprocess.run(["cmake", "--build", str(local_tree), "--target", "clean"], check=True,
                               env=env, capture_output=True)
                measured["local"].append({"wall": wall, "cpu": cpu, "steal": steal})
                return measured["local"][-1]

            before = local()
            turn = round_ % len(groups)
            for name, runner, variant_env in (v for g in groups[turn:] + groups[:turn] for v in g):
                # Each round's first build with helpers starts with an empty scan cache.
                variant_env = dict(variant_env, BATON_CACHE_DIR=str(workdir / f"scan-cache-{round_}"))
                launcher = ["-DCMAKE_C_COMPILER_LAUNCHER=distcc"] if name == DISTCC else []
                if name.startswith(WARM):
                    subprocess.run(["cmake", "--build", str(build), "--target", "clean"], check=True,
                                   env=variant_env, capture_output=True)
                else:
                    build = workdir / f"build-{len(os.listdir(workdir))}"
                    configure(source, build, variant_env, [r for r in runner if r != "--json"], launcher)
                compiled = distcc.compiled() if distcc else 0
                parallel = remote_jobs if name.startswith(("baton run, ", "distcc")) else jobs
                wall, cpu, steal, stdout = build_once(runner, build, parallel, variant_env)
                after = local()
                around = {key: (before[key] + after[key]) / 2 for key in ("wall", "cpu")}
                measured[name].append({"wall": wall, "cpu": cpu, "steal": steal,
                                       "ratio": wall / around["wall"], "cpu_ratio": cpu / around["cpu"]})
                before = after
                if "--json" in runner:
                    figures = json.loads(stdout.splitlines()[-1])
                    remote[name] = (f"{figures['remote']}/{figures['jobs']} jobs remote, "
                                    f"{figures.get('include_scans', 0)} named by include lines, "
                                    f"{figures.get('scan_cache_hits', 0)} scans from the cache"
                                    + (f", {cores_held(cluster, figures['id'])}" if cluster and figures.get('recorded')
                                       else ""))
                elif launcher:
                    remote[name] = f"{distcc.compiled() - compiled} jobs on distccd"
    finally:
        if distcc is not None:
            distcc.stop()
    return report_builds(measured, remote, distcc is not None)


def report_builds(measured: dict[str, list[dict]], remote: dict[str, str], with_distcc: bool) -> list[dict]:
    """Each variant's medians: wall and machine CPU, and their ratios to the local builds around it."""
    out = []
    for name, runs in measured.items():
        wall, cpu = (statistics.median(r[key] for r in runs) for key in ("wall", "cpu"))
        steal = statistics.median(r["steal"] for r in runs)
        entry = {"name": name, "wall_s": wall, "walls_s": [r["wall"] for r in runs], "cpu_s": cpu,
                 "steal_s": steal, "remote": remote.get(name)}
        if name == "local":
            print(f"  {name:<53} wall {wall:6.2f} s  (median of {len(runs)}: {min(entry['walls_s']):.2f}-"
                  f"{max(entry['walls_s']):.2f} s)")
            print(f"  {'':<53} CPU  {cpu:6.2f} s  (the machine's, all processes; steal {steal:.2f} s)")
        else:
            ratios = [r["ratio"] for r in runs]
            entry.update(ratio=statistics.median(ratios), ratios=ratios,
                         cpu_ratio=statistics.median(r["cpu_ratio"] for r in runs))
            print(f"  {name:<53} wall {wall:6.2f} s  (x{entry['ratio']:.2f} of local; best x{min(ratios):.2f})  "
                  f"{remote.get(name, '')}")
            print(f"  {'':<53} CPU  {cpu:6.2f} s  (x{entry['cpu_ratio']:.2f} of local; steal {steal:.2f} s)")
        out.append(entry)
    if not with_distcc:
        print("  distcc: not installed, not measured")
        return out
    theirs = measured[DISTCC]
    for name, runs in measured.items():
        if name.startswith("baton run, "):
            # Round by round: both ratios are to local builds of the same minutes.
            walls = [r["ratio"] / d["ratio"] for r, d in zip(runs, theirs)]
            cpus = [r["cpu_ratio"] / d["cpu_ratio"] for r, d in zip(runs, theirs)]
            print(f"  {name} / distcc: x{statistics.median(walls):.2f} (best: x{min(walls):.2f}; "
                  f"CPU x{statistics.median(cpus):.2f}); at or below distcc in {sum(w <= 1 for w in walls)} "
                  f"of {len(walls)} rounds: {' '.join(f'{w:.2f}' for w in walls)}")
    for kind, names in helper_builds(measured).items():
        rounds = [statistics.fmean(measured[name][i]["ratio"] for name in names) / d["ratio"]
                  for i, d in enumerate(theirs)]
        figure = against_distcc(rounds)
        spread = (f"x{figure['low']:.3f}-{figure['high']:.3f} within two standard errors"
                  if figure["low"] is not None else "one round: no spread")
        print(f"  Baton [{kind}] / distcc, a round's {len(names)} builds with helpers together: "
              f"geometric mean x{figure['geomean']:.3f} over {figure['rounds']} rounds ({spread}); "
              f"at or below distcc in {figure['at_or_below']}")
        out.append({"name": f"baton [{kind}] / distcc", "builds": names, "per_round": rounds, **figure})
    return out


def helper_builds(measured: dict[str, list[dict]]) -> dict[str, list[str]]:
    """The builds with helpers named by their include lines (not the scanned ones, the w10
    comparison), by wrapper kind: what a `baton run` on a farm does, cold and warm."""
    kinds: dict[str, list[str]] = {}
    for name in measured:
        if name.startswith("baton run, ") and "scanned" not in name:
            kinds.setdefault(name.rpartition("[")[2].rstrip("]"), []).append(name)
    return kinds


def against_distcc(rounds: list[float]) -> dict:
    """Baton's wall over distcc's, one figure a round: their geometric mean, and the mean of
    logs +- two standard errors (about 95 % from a dozen rounds on). One round moves by +-10 %
    on this VM, so "at or below distcc" is read from many rounds together, not from one."""
    logs = [math.log(r) for r in rounds]
    mean = statistics.fmean(logs)
    error = 2 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else None
    return {"rounds": len(rounds), "geomean": math.exp(mean), "at_or_below": sum(r <= 1 for r in rounds),
            "low": None if error is None else math.exp(mean - error),
            "high": None if error is None else math.exp(mean + error)}


def farm_options(cluster) -> list[str]:
    return ["--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
            "--agent-token-file", str(cluster.dir / "agent-token")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="tiny compiles per variant")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs of the whole builds")
    parser.add_argument("--remote-jobs", type=int, default=None,
                        help="parallel jobs of the builds with helpers and with distcc (default: --jobs)")
    parser.add_argument("--repeat", type=int, default=1, help="whole builds per variant (the median is shown)")
    parser.add_argument("--cares", default=None, help="a c-ares source tree (default: from pycares' sdist)")
    parser.add_argument("--cluster", action="store_true",
                        help="also build with two one-core helper agents of a local cluster")
    parser.add_argument("--wrapper", choices=("both", "native", "python"), default="both",
                        help="the compiler wrapper(s) of the baton run figures (default: both, side by side)")
    parser.add_argument("--builds-only", action="store_true", help="only the whole builds (3.)")
    parser.add_argument("--no-scanned", action="store_true",
                        help="without the builds whose jobs are all scanned (BATON_INCLUDE_SCAN=0): more rounds "
                             "in the same time for the figures against local and distcc")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--probe", nargs=2, metavar=("BUILD", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe(*args.probe)
    with tempfile.TemporaryDirectory(prefix="baton-bench-compile-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o711)   # a root agent's tasks and compiles run as nobody, who must reach its work dir
        env = dict(os.environ, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(workdir / "wrappers"),
                   BATON_CACHE_DIR=str(workdir / "cache"))
        source = Path(args.cares) if args.cares else fetch_cares(workdir)
        kinds = ["native", "python"] if args.wrapper == "both" else [args.wrapper]
        report, different = {}, 0
        build = workdir / "build-halves"
        if not args.builds_only:
            report["startup"] = startup(args.runs, workdir, env, kinds)
            configure(source, build, env, [])
            report["halves"], different = halves(build)
        cluster = None
        if args.cluster:
            from cli.local import LocalCluster

            cluster = LocalCluster(workdir / "cluster", agents=2, backups=0, cores=1, ttl=2, tls=False,
                                   web=False).start()
        try:
            builds_dir = workdir / "builds"
            builds_dir.mkdir()
            report["builds"] = builds(source, builds_dir, env, args.jobs, cluster, args.repeat,
                                      args.remote_jobs, tuple(kinds), scanned=not args.no_scanned)
            if not args.builds_only:   # 4. needs the tree of 2.
                run = [sys.executable, "-m", "cli", "run"]
                probes = []
                for kind in kinds:
                    kind_env = wrapper_env(env, workdir, kind)
                    probes.append((f"baton run --local-only [{kind}]", [*run, "--local-only", "--"], kind_env))
                    if cluster is not None:
                        probes.append((f"baton run, 2 one-core helpers [{kind}]", [*run, *farm_options(cluster), "--"],
                                       kind_env))
                report["per_job"] = per_job(build, workdir, probes)
        finally:
            if cluster is not None:
                cluster.stop()
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())
