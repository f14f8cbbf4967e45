"""A timing shim for bench/run_cpu.py: each job-server part's thread CPU over a real build.

    RUN_CPU_PATCH=$PWD/bench/job_server_shim.py python bench/run_cpu.py --tree OLD --tree NEW --threads

bench/run_cpu.py runs this file in each `baton run` process before cli.main. It wraps
the job server's functions (cli/job_server.py and what it calls) with time.thread_time()
accounting: the CPU of the calling thread only, so a blocking gRPC call counts its
Python and the C work done in that thread, not the wait nor gRPC's own threads. At exit
it writes {part: [ms in the build, calls]} to $RUN_CPU_OUT.parts, which the bench prints.
Jobs answered "locally" are counted by their reason (0 ms). Wraps only names that exist,
so that an older tree can be measured too. Not a class: patching a message class (e.g.
pb.CompileRequest) would break the stubs, which bind its methods.
"""


def _install() -> None:
    import atexit
    import collections
    import inspect
    import json
    import os
    import socketserver
    import threading
    import time

    clock = time.thread_time
    parts: dict = collections.defaultdict(float)
    counts: dict = collections.defaultdict(int)
    lock = threading.Lock()

    def add(name: str, seconds: float) -> None:
        with lock:
            parts[name] += seconds
            counts[name] += 1

    def wrap(owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr, None)
        if inner is None:
            return
        static = isinstance(inspect.getattr_static(owner, attr), staticmethod)

        def timed(*args, **kwargs):
            started = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                add(name, clock() - started)
        setattr(owner, attr, staticmethod(timed) if static else timed)

    import cli.ccwire as ccwire
    import cli.core_client as core_client
    import cli.job_inputs as job_inputs
    import cli.job_server as job_server

    wrap(socketserver.ThreadingMixIn, "process_request_thread", "connection thread (whole)")
    wrap(ccwire, "receive", "ccwire.receive")
    wrap(ccwire, "send", "ccwire.send")
    for name in ("plan", "cached_scan", "input_paths", "job_locale"):
        wrap(job_server, name, name)
    wrap(job_server.JobServer, "compile", "compile (whole)")
    wrap(job_server.JobServer, "_send", "_send")
    wrap(job_server.JobServer, "_stub", "_stub")
    for name in ("_scan", "_after_include_scan", "_write_depfile"):
        wrap(job_server.JobServer, name, name)
    for name in ("_identity", "_system_dirs"):
        wrap(job_server, name, name)
    import cli.include_scan as include_scan
    wrap(include_scan.IncludeScan, "files", "IncludeScan.files")
    wrap(include_scan.Directories, "refresh", "Directories.refresh")
    for name in ("acquire_core", "release", "local_at_once"):
        wrap(core_client.CoreClient, name, name)
    wrap(job_inputs.Digests, "inputs", "Digests.inputs")
    wrap(job_inputs.Delivered, "lacks", "Delivered.lacks")
    wrap(job_inputs.Delivered, "sent", "Delivered.sent")
    compile_ = job_server.JobServer.compile

    def counted(self, job):
        reply = compile_(self, job)
        if "local" in reply:
            add("local: " + str(reply["local"])[:120], 0.0)
        return reply
    job_server.JobServer.compile = counted

    def write() -> None:
        with open(os.environ["RUN_CPU_OUT"] + ".parts", "w") as f:
            json.dump({k: [round(v * 1000, 1), counts[k]] for k, v in sorted(parts.items())}, f)
    atexit.register(write)


_install()
del _install
