"""How a helper starts its compiler, variant against variant, in one process, job by job.

    python -m bench.helper_spawn [--passes 3] [--variants old,new,...] [--cares DIR]

bench/helper_cpu.py measures a whole helper, old tree against new, run
after run; a difference of ~1 ms a job in the compiler processes is within
what the machine's load moves between two runs. Here the 94 c-ares compiles
(as bench/helper_cpu.py prepares them) run through agent.compile_job's
run_compile in this process, from a reused job root and the input store, as
nobody when this runs as root, each job under every variant in turn (the
order rotating from job to job), so a change of load hits all variants
alike. A variant is how the compiler's process is started and waited for
(compile_job._run and the user switch, patched); per job it reports the
children's CPU (getrusage of the waited children: setpriv, gcc, cc1, as)
and this process's own CPU for the call (the thread's clock: lay-out,
spawn, wait, reading the object).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import compile_job  # noqa: E402
from agent.compile_job import CompileJob, run_compile  # noqa: E402
from agent.input_store import InputStore  # noqa: E402
from agent.job_root import RootPool  # noqa: E402
from bench.helper_cpu import prepare  # noqa: E402

_NEW_RUN = compile_job._run
_NEW_AS_USER = compile_job._as_user


def _old_run(argv, cwd, env, timeout, preexec, user, scratch):
    """8e1eef5's wait: subprocess.run with both outputs piped (communicate's selector loop)."""
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, preexec_fn=preexec, user=user)
    except subprocess.TimeoutExpired:
        return None, b""
    return done.returncode, done.stderr[:compile_job.MAX_DIAGNOSTICS]


def _stderr_pipe_run(argv, cwd, env, timeout, preexec, user, scratch):
    """stdout to /dev/null, stderr to a pipe read to its end, then waited (no timer)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=preexec, user=user)
    with proc.stderr:
        err = proc.stderr.read(compile_job.MAX_DIAGNOSTICS)
    return proc.wait(), err


def _no_nnp(user):
    return tuple(a for a in _NEW_AS_USER(user) if a != "--no-new-privs")


def _no_switch(user):
    return ()


# name -> (_run, _as_user, user): how the compiler is started
VARIANTS = {
    "old": (_old_run, _no_nnp, "nobody"),           # 8e1eef5: pipes, setpriv without --no-new-privs
    "new": (_NEW_RUN, _NEW_AS_USER, "nobody"),      # the head
    "new-nnp": (_NEW_RUN, _no_nnp, "nobody"),       # the head without --no-new-privs
    "old+nnp": (_old_run, _NEW_AS_USER, "nobody"),  # 8e1eef5's pipes with --no-new-privs
    "errpipe": (_stderr_pipe_run, _NEW_AS_USER, "nobody"),
    "root": (_NEW_RUN, _no_switch, None),           # no user switch at all (no setpriv exec)
}


def thread_cpu() -> float:
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--variants", default="old,new")
    parser.add_argument("--cares", default=None)
    args = parser.parse_args()
    names = args.variants.split(",")
    if os.geteuid() != 0:
        VARIANTS.update({n: (r, u, None) for n, (r, u, _) in VARIANTS.items()})
    with tempfile.TemporaryDirectory(prefix="baton-bench-helper-spawn-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o711)
        argvs, cwds, requests = prepare(workdir, Path(args.cares) if args.cares else None)
        compile_dir = workdir / "compile"
        (compile_dir / "jobs").mkdir(parents=True)
        os.chmod(compile_dir, 0o711)
        os.chmod(compile_dir / "jobs", 0o711)
        store = InputStore(str(compile_dir / "store"))
        jobs = []
        for request in requests:
            for f in request.inputs:
                store.put(f.sha256, Path(f.path).read_bytes())
            jobs.append((request.compiler, CompileJob(
                args=tuple(request.args), source=request.source, cwd=request.cwd, files={},
                system_dirs=tuple(request.system_dirs), inputs={f.path: f.sha256 for f in request.inputs}),
                dict(request.locale)))
        pools = {name: RootPool(str(compile_dir / "jobs"), VARIANTS[name][2], keep=1) for name in names}
        kids = {name: [] for name in names}
        own = {name: [] for name in names}
        print(f"{len(jobs)} c-ares compiles, variants {names}, load {os.getloadavg()[0]:.2f}", flush=True)
        for p in range(args.passes + 1):   # the first pass warms the roots and the page cache
            for i, (compiler, job, locale) in enumerate(jobs):
                k = (i + p) % len(names)
                for name in names[k:] + names[:k]:
                    compile_job._run, compile_job._as_user, user = VARIANTS[name]
                    c0, t0 = children_cpu(), thread_cpu()
                    result = run_compile(compiler, job, user=user, store=store, roots=pools[name], locale=locale)
                    t1, c1 = thread_cpu(), children_cpu()
                    if result.exit_code != 0:
                        raise RuntimeError(f"{name}: {job.source}: {result.diagnostics[-300:]!r}")
                    if p:
                        kids[name].append(c1 - c0)
                        own[name].append(t1 - t0)
            if p:
                print(f"  pass {p}, load {os.getloadavg()[0]:.2f}: " + ", ".join(
                    f"{n} {sum(kids[n][-len(jobs):]) / len(jobs) * 1e3:.2f}" for n in names), flush=True)
        compile_job._run, compile_job._as_user = _NEW_RUN, _NEW_AS_USER
        base = names[0]
        for name in names:
            diffs = [a - b for a, b in zip(kids[name], kids[base])]
            print(f"{name}: children {sum(kids[name]) / len(kids[name]) * 1e3:.2f} ms/job "
                  f"(mean diff to {base} {statistics.mean(diffs) * 1e3:+.2f}, median {statistics.median(diffs) * 1e3:+.2f}), "
                  f"own {statistics.mean(own[name]) * 1e3:.3f} ms/job (median {statistics.median(own[name]) * 1e3:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
