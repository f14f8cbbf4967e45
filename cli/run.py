"""`baton run [--max-remote N] [--local-only] [--json] -- COMMAND...`: a real build.

COMMAND (make, ninja, `cmake --build`) runs here, as it would without
Baton, with the compiler wrappers first on PATH and CC/CXX naming them, so
that its compiles reach `baton cc`: the native one (cli/native: built at
start with the system C compiler, once per version; the wrappers are
symlinks to it), else cli/cc.py (the scripts below; one line on stderr says
why). The wrapper directory has a fixed path (cli.cc.wrapper_dir), so a tree
configured under `baton run` keeps building under the next one. `baton run` prints the build's id when
it starts (one line on stderr), exits with COMMAND's exit code, and ends
with one summary line: jobs remote/local, helper cores used, wall time.

With a cluster to reach (`farm`), it holds the build's helper-core grants
from the leader and serves the build's `baton cc` processes on a socket in
the run directory, sending their compiles to helpers (cli/initiator.py),
and reports the build to the cluster (its start, jobs and end: the API and
the UI's build monitor show it as a build of kind `run`, cli/run_report.py);
at the end it waits at most cli.core_client.FINISH_WAIT s for the record.
When no coordinator was ever reached (etcd unreachable, no leader), it does
not wait for a record nobody can make: it says so in one line and ends.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid

from cli.cc import COMPILER_NAMES, JOBS_LOG, LOCAL_ONLY_ENV, RUN_DIR_ENV, wrapper_dir
from cli.user_env import user_environ

# The Python wrapper, where the native one does not build. Outside `baton run`
# it is the compiler on PATH (found by the shell, skipping the wrapper
# directory): no Python at all. Inside, Python without `site` (-S: its .pth
# files cost ~35 ms a start) runs `baton cc`.
WRAPPER = """#!/bin/sh
# Written by `baton run`: hands this compile to `baton cc`; outside `baton run`
# it is the {name} on PATH.
if [ -z "${{BATON_RUN_DIR:-}}" ]; then
  set -f
  IFS=:
  for dir in $PATH; do
    if [ -n "$dir" ] && [ "$dir" != {wrappers} ] && [ -f "$dir/{name}" ] && [ -x "$dir/{name}" ]; then
      unset IFS
      exec "$dir/{name}" "$@"
    fi
  done
  echo "baton cc: no compiler named {name} on PATH" >&2
  exit 127
fi
exec {python} -S -c 'import sys; sys.path.insert(0, sys.argv[1]); from cli.cc import main; sys.exit(main(sys.argv[2:]))' {root} {name} "$@"
"""
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the `cli` package lives


WRAPPER_MODULES = ("__init__.py", "cc.py", "cc_args.py", "ccwire.py")   # what `baton cc` imports


def precompile(sources: list[str] | None = None) -> None:
    """Byte-compile the modules `baton cc` imports (or `sources`): with PYTHONDONTWRITEBYTECODE
    set (as in many CI and container environments) every compile of a build would otherwise
    compile them from source again, ~4 ms a job. A tree that cannot be written is left
    as it is (an installed package ships them compiled)."""
    import importlib.util
    import py_compile

    if sources is None:
        sources = [os.path.join(ROOT, "cli", name) for name in WRAPPER_MODULES]
    for source in sources:
        cached = importlib.util.cache_from_source(source)
        try:
            if os.stat(cached).st_mtime_ns >= os.stat(source).st_mtime_ns:
                continue
        except OSError:
            pass
        try:
            py_compile.compile(source, cfile=cached, doraise=True)
        except (OSError, py_compile.PyCompileError):
            pass


def precompile_loaded() -> None:
    """Byte-compile Baton's own modules this `baton run` loaded, once COMMAND is over: with
    PYTHONDONTWRITEBYTECODE set, each `baton run` compiled them from source again at its
    start, ~50-70 ms of CPU a build taken from the build's compiles (bench/run_cpu.py)."""
    if not sys.dont_write_bytecode:
        return   # Python wrote them itself
    sources = [module.__file__ for module in list(sys.modules.values())
               if (getattr(module, "__file__", None) or "").endswith(".py")
               and module.__file__.startswith(ROOT + os.sep)]
    precompile(sources)


NATIVE_ENV = "BATON_CC_NATIVE"   # "0": the Python wrapper even where the native one builds


def _put(path: str, *, text: str | None = None, link: str | None = None) -> None:
    """`path` as this script or this symlink, replaced in one rename (a build may be running it)."""
    try:
        if link is not None and os.readlink(path) == link:
            return
        if text is not None and not os.path.islink(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return
    except (OSError, UnicodeDecodeError):
        pass
    tmp = f"{path}.tmp-{os.getpid()}"
    if link is not None:
        os.symlink(link, tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def install_wrappers(directory: str | None = None, python: str | None = None, native: bool | None = None,
                     compilers_path: str | None = None) -> str:
    """Write (or refresh) the wrappers; returns the directory. Each is a symlink to the native
    `baton cc` (cli/native) when it builds, else the script running cli/cc.py, saying why on
    stderr in one line. native: False for the Python wrapper (default: unless $BATON_CC_NATIVE=0);
    compilers_path: where to look for the C compiler that builds it (default $PATH)."""
    directory = os.path.abspath(directory or wrapper_dir())
    os.makedirs(directory, exist_ok=True)
    binary = None
    if native is None:
        native = os.environ.get(NATIVE_ENV, "1") != "0"
    if native:
        from cli import native as native_cc

        binary, why = native_cc.build(directory, compilers_path)
        if binary is None:
            print(f"baton run: using the Python compiler wrapper: the native one did not build: {why}",
                  file=sys.stderr, flush=True)
    if binary is None:
        precompile()
    python = python or sys.executable
    for name in COMPILER_NAMES:
        path = os.path.join(directory, name)
        if binary is not None:
            _put(path, link=os.path.relpath(binary, directory))
        else:
            _put(path, text=WRAPPER.format(name=name, python=shlex.quote(python), wrappers=shlex.quote(directory),
                                           root=shlex.quote(ROOT)))
    return directory


def read_jobs(run_dir: str) -> list[dict]:
    try:
        with open(os.path.join(run_dir, JOBS_LOG), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def summary(jobs: list[dict], wall: float) -> dict:
    remote = [j for j in jobs if j.get("helper") not in (None, "local")]
    return {"jobs": len(jobs), "remote": len(remote), "local": len(jobs) - len(remote),
            "helper_cores": len({(j["helper"], j.get("core")) for j in remote}),
            "helpers": sorted({j["helper"] for j in remote}),
            "failed": sum(1 for j in jobs if j.get("exit_code")), "wall": round(wall, 2)}


def run(command: list[str], *, local_only: bool = False, max_remote: int | None = None,
        as_json: bool = False, python: str | None = None, farm=None) -> int:
    """`farm`: a cli.initiator.Farm to send compiles to helpers; None compiles everything here."""
    if not command:
        print("baton run: give the build command after --, e.g. baton run -- make -j8", file=sys.stderr)
        return 2
    build_id = uuid.uuid4().hex[:12]
    # First, before the initiator's threads can log anything: tools and people read it off the first line.
    print(f"baton run: build {build_id}", file=sys.stderr, flush=True)
    wrappers = install_wrappers(python=python)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"baton-run-{build_id}-") as run_dir:
        # The user's environment, not Python's coerced locale (cli/user_env.py).
        env = dict(user_environ(), PATH=wrappers + os.pathsep + os.environ.get("PATH", ""),
                   CC=os.path.join(wrappers, "cc"), CXX=os.path.join(wrappers, "c++"),
                   BATON_RUN_ID=build_id, **{RUN_DIR_ENV: run_dir})
        initiator = None
        if local_only or max_remote == 0 or farm is None:
            env[LOCAL_ONLY_ENV] = "1"
        else:
            from cli.initiator import Initiator

            initiator = Initiator(farm, build_id, run_dir, max_remote, command=command).start()
        try:
            code = subprocess.run(command, env=env).returncode
        except FileNotFoundError:
            print(f"baton run: {command[0]}: command not found", file=sys.stderr)
            code = 127
        except KeyboardInterrupt:
            code = 130
        finally:
            if initiator is not None:
                initiator.jobs.stop()   # COMMAND is over: no more compiles
        jobs = read_jobs(run_dir)
        figures = summary(jobs, time.monotonic() - started)
        if initiator is not None:   # scans taken from the cache (cli/scan_cache.py) and run, and
            # compiles whose files the include lines named (cli/include_scan.py)
            figures.update(scan_cache_hits=initiator.jobs.scan_cache.hits,
                           scan_cache_misses=initiator.jobs.scan_cache.misses,
                           include_scans=initiator.jobs.include_scan.used,
                           include_rescans=initiator.jobs.rescans)
        recorded = False
        if initiator is not None:
            try:
                recorded = initiator.finish(code, figures["wall"], figures)
            finally:
                initiator.cores.stop()
            if not initiator.cores.reached:
                print("baton run: the build was not recorded: no coordinator was reached", file=sys.stderr)
    precompile_loaded()
    if as_json:
        print(json.dumps({"id": build_id, "exit_code": code, "recorded": recorded, **figures}))
    print(f"baton run: {figures['jobs']} jobs ({figures['remote']} remote, {figures['local']} local), "
          f"{figures['helper_cores']} helper cores, wall {figures['wall']:.1f} s, exit {code}",
          file=sys.stderr)
    return code
