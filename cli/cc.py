"""`baton cc COMPILER ARGS...`: one compiler invocation of a build.

Run once per compile, hundreds of times a build, so it starts fast: it
imports only the standard library and the pure argument rules until it
knows a job could go remote. Outside `baton run` it becomes the real
compiler at once (`os.execv`): a tree configured under `baton run` (CMake
records the wrapper's path) keeps building without it.

Under `baton run` ($BATON_RUN_DIR set) each invocation is a job: it runs
here or on a helper, and its record (source, helper or "local", the
helper's slot and when the job held it, started, finished, duration, exit code, why local) is appended to the run's job log,
one JSON line written with a single O_APPEND write, so that concurrent jobs
never interleave. A job that may go remote (cli.cc_args.plan) is handed
to `baton run` over the run's socket (cli/ccwire.py): `baton run` scans it
(that writes the dependency file) and forwards it to a helper
(cli/job_server.py); the object it gets back is written where the
compile would write it, the diagnostics go to stderr and the compiler's exit
code is ours. When `baton run` answers "locally" (no leader, no free helper
core in time, a failed or refusing helper), the compile runs here and the
record says why (docs/design.md section 8).

cli/native/baton_cc.c is this module in C (and cli.cc_args.plan with it),
which `baton run` installs instead where a C compiler builds it: the same
words, records and exit codes without Python's start-up. A change of
behaviour here is made there too; tests/test_native_cc.py runs both side by
side and fails when they differ.
"""
from __future__ import annotations

import os
import sys
import time

RUN_DIR_ENV = "BATON_RUN_DIR"
WRAPPER_DIR_ENV = "BATON_WRAPPER_DIR"
JOBS_LOG = "jobs.jsonl"
LOCAL_ONLY_ENV = "BATON_RUN_LOCAL_ONLY"
COMPILER_NAMES = ("cc", "gcc", "g++", "c++", "clang", "clang++")


def wrapper_dir() -> str:
    """The fixed directory of the compiler wrappers (CMake records the path it finds)."""
    explicit = os.environ.get(WRAPPER_DIR_ENV)
    if explicit:
        return os.path.abspath(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "baton", "wrappers")


def real_compiler(name: str, path: str | None = None) -> str:
    """`name` on PATH, skipping the wrapper directory (else the wrapper would call itself)."""
    if os.sep in name:
        return name
    skip = os.path.realpath(wrapper_dir())
    for directory in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        if not directory or os.path.realpath(directory) == skip:
            continue
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"baton cc: no compiler named {name!r} on PATH")


def _json(value) -> str:
    """`value` as JSON; str, int, float, bool and None without `json`, which costs `baton cc`
    ~7 ms to import."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if not isinstance(value, str):   # lists, dicts: rare enough to pay for json
        import json

        return json.dumps(value, separators=(",", ":"))
    # Everything below U+0020, the quote, the backslash and lone surrogates (undecodable
    # file names) as \\uXXXX: valid JSON, and the line stays valid UTF-8.
    return '"' + "".join(c if " " <= c and c not in '"\\' and not "\ud800" <= c <= "\udfff" else f"\\u{ord(c):04x}"
                         for c in value) + '"'


def record(run_dir: str, job: dict) -> None:
    """Append one job record to the run's log in a single write."""
    line = ("{" + ",".join(f"{_json(k)}:{_json(v)}" for k, v in job.items()) + "}\n").encode()
    fd = os.open(os.path.join(run_dir, JOBS_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def compile_locally(argv: list[str]) -> int:
    """Run the compiler and wait (posix_spawn: `subprocess` costs ~3 ms to import). Python
    ignores SIGPIPE and SIGXFSZ; the compiler gets them back as `subprocess` would give them."""
    import _signal

    from cli.user_env import user_environ

    # The user's environment, not the LC_CTYPE Python coerced for itself (cli/user_env.py).
    pid = os.posix_spawn(argv[0], argv, user_environ(), setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


def compile_remotely(run_dir: str, argv: list[str], output: str) -> tuple[str | None, int | None, str, dict]:
    """(helper name, exit code, "", where and when it ran) when a helper compiled it, else
    (None, None, why not, {}). Where and when: the job record's `core` (the slot of the
    build's grant it ran in) and `core_started`, `core_finished` (when it held that core).

    `baton run` does the rest (cli/job_server.py): it scans the compile (which
    writes the dependency file), names its inputs by hash and sends them to a
    helper, with the locale of the environment sent here (the compiler's
    words follow it); this process only waits (the raw `_socket`: `socket`
    costs ~3 ms)."""
    import _socket

    from cli import ccwire
    from cli.user_env import user_environ

    cwd = os.getcwd()
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(os.path.join(run_dir, ccwire.SOCKET))
            # The user's locale, not the LC_CTYPE Python coerced for itself (cli/user_env.py).
            ccwire.send(sock, {"argv": argv, "cwd": cwd, "env": user_environ()})
            reply = ccwire.receive(sock)
        finally:
            sock.close()
    except (OSError, ValueError) as exc:
        return None, None, f"baton run did not answer: {exc}", {}
    if "helper" not in reply:
        return None, None, reply.get("local") or "baton run said so", {}
    code = int(reply["exit_code"])
    output = os.path.join(cwd, output)
    if code == 0:
        tmp = f"{output}.baton-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(reply["object"])
        os.replace(tmp, output)
    elif os.path.exists(output):
        os.unlink(output)   # as the compiler does when it fails
    sys.stderr.buffer.write(reply["diagnostics"])
    sys.stderr.flush()
    placed = {"core": reply["core"]} if reply.get("core") is not None else {}
    if isinstance(reply.get("core_started_ms"), int) and isinstance(reply.get("core_finished_ms"), int):
        placed.update(core_started=reply["core_started_ms"] / 1000, core_finished=reply["core_finished_ms"] / 1000)
    return reply["helper"], code, "", placed


def main(args: list[str]) -> int:
    if not args:
        print("usage: baton cc COMPILER ARGS...", file=sys.stderr)
        return 2
    try:
        compiler = real_compiler(args[0])
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 127
    argv = [compiler, *args[1:]]
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        from cli.user_env import user_environ

        os.execve(compiler, argv, user_environ())  # outside `baton run`: the compiler itself, nothing in between
    from cli.cc_args import Local, plan

    decided = plan(argv)
    started = time.time()
    helper = code = None
    placed: dict = {}
    if isinstance(decided, Local):
        source, why = None, decided.reason
    elif os.environ.get(LOCAL_ONLY_ENV):
        source, why = decided.source, "baton run --local-only"
    elif not os.path.exists(os.path.join(run_dir, "cc.sock")):   # cli.ccwire.SOCKET, not imported for this
        source, why = decided.source, "baton run serves no helper cores"
    else:
        source = decided.source
        helper, code, why, placed = compile_remotely(run_dir, argv, decided.output)
    if helper is None:
        code = compile_locally(argv)
    finished = time.time()
    if "-c" in argv:  # a compile; links and other steps are not jobs
        job = {"source": source, "helper": helper or "local", "started": round(started, 3),
               "finished": round(finished, 3), "duration": round(finished - started, 3),
               "exit_code": code, "compiler": os.path.basename(compiler)}
        if helper is None:
            job["why_local"] = why
        else:   # the build monitor's lane on that helper (cli/core_client.py acquire_core), and the bar on it
            job.update(placed)
        record(run_dir, job)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
