"""A timeline shim for bench/run_cpu.py: when each step of a `baton run` first happens.

    RUN_CPU_PATCH=$PWD/bench/run_timeline_shim.py python bench/run_cpu.py --rounds 1 --warm 2

bench/run_cpu.py runs this file in each `baton run` process before cli.main. It
marks, in seconds from the process's start (/proc/self/stat's start time, in
clock ticks: 10 ms steps), the first time each step happens: the imports
done, the cluster's stream opened, COMMAND started, the first job in, its
compiler identity and system directories, its files named, the first grant,
the first job sent and answered, COMMAND over, the build's end reported and
recorded, the job server stopped, the last exit handler. At exit it writes
them to $RUN_CPU_OUT.parts, which the bench prints after each build. What it
showed (bench/README.md, "A build's start and end", issue 14): the job server's
stop waited up to half a second for its serving loop's next poll. Wraps only
names that exist, so that an older tree can be timed too.
"""


def _install() -> None:
    import atexit
    import json
    import os
    import subprocess
    import threading
    import time

    with open("/proc/self/stat") as f:
        stat = f.read()
    started = int(stat[stat.rindex(")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")
    marks: dict[str, float] = {}
    lock = threading.Lock()

    def mark(name: str) -> None:
        with lock:
            marks.setdefault(name, round(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 4))

    mark("python started, site imported")
    from cli import core_client, job_server, run

    mark("imports (grpc, the job server)")

    def wrap(owner, attr: str, before: str | None = None, after: str | None = None, when=None) -> None:
        inner = getattr(owner, attr, None)
        if inner is None:
            return

        def wrapper(*args, **kwargs):
            if before and (when is None or when(args, kwargs)):
                mark(before)
            result = inner(*args, **kwargs)
            if after and (when is None or when(args, kwargs)):
                mark(after)
            return result

        setattr(owner, attr, wrapper)

    core = core_client.CoreClient
    wrap(core, "start", before="cores: start")
    wrap(core, "_hold_stream", before="cores: stream to the leader")
    wrap(core, "_set_grants", after="cores: first grant", when=lambda a, k: len(a[1]) > 0)
    wrap(core, "finish", before="build's end reported", after="build's end recorded")
    wrap(core, "stop", before="cores: stop")
    wrap(job_server.JobServer, "compile", before="first job in", after="first job answered")
    wrap(job_server, "_identity", after="first compiler identity")
    wrap(job_server, "_system_dirs", after="first system directories")
    wrap(job_server.JobServer, "_scan", after="first job's files named")
    wrap(job_server.JobServer, "_send", before="first job sent", after="first job's reply")
    wrap(job_server.JobServer, "stop", before="job server: stop", after="job server: stopped")
    # COMMAND: cli.run's subprocess.run with the build's environment (the scans run others).
    wrap(subprocess, "run", before="COMMAND started", after="COMMAND over", when=lambda a, k: "env" in k
         and run.RUN_DIR_ENV in (k["env"] or {}))

    def write() -> None:
        mark("last exit handler")
        with open(os.environ["RUN_CPU_OUT"] + ".parts", "w") as f:
            json.dump(dict(sorted(marks.items(), key=lambda kv: kv[1])), f)

    atexit.register(write)


_install()
