"""The CPU one Helper.Compile unary call costs `baton run`, by how long the helper takes.

    python bench/grpc_wait.py [--calls 40] [--delay 0 --delay 0.08]

`_send` (cli/job_server.py) measured 0.7-0.9 ms of its thread's CPU a job in warm
c-ares builds (bench/job_server_shim.py), though the call's serialization and
gRPC's wrapper take ~0.2 ms when the reply comes at once. This bench calls a
helper stand-in in another process (its Compile answers a 60 kB object after
--delay s) with a request like a c-ares job's (~150 InputFiles, no contents), one
call at a time as a job thread does, and prints, per call, the CPU of the calling
thread (time.thread_time) and of the whole client process (all its threads,
gRPC's own included).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import os, sys, time
from concurrent import futures
import grpc
from cluster.protocol import compile_pb2 as pb, compile_pb2_grpc as pbg
delay = float(sys.argv[1])
reply = pb.CompileReply(exit_code=0, object=os.urandom(60000))
class Helper(pbg.HelperServicer):
    def Compile(self, request, context):
        time.sleep(delay)
        return reply
server = grpc.server(futures.ThreadPoolExecutor(2))
pbg.add_HelperServicer_to_server(Helper(), server)
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
sys.stdin.read()   # until the client closes it
server.stop(0)
"""


def measure(delay: float, calls: int) -> tuple[float, float]:
    import grpc

    from cluster.protocol import compile_pb2 as pb
    from cluster.protocol import compile_pb2_grpc as pbg

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(delay)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        port = int(server.stdout.readline())
        request = pb.CompileRequest(
            grant="g" * 12, epoch=1, compiler="gcc", compiler_identity="x" * 64, args=["-O2"] * 20,
            source="src/lib/ares_addrinfo.c", cwd="/tmp/build",
            inputs=[pb.InputFile(path=f"/usr/include/x86_64-linux-gnu/sys/header{i}.h", sha256="d" * 64, size=4000)
                    for i in range(150)])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pbg.HelperStub(channel)
            for _ in range(3):
                stub.Compile(request, timeout=600.0)
            thread, process = time.thread_time(), time.process_time()
            for _ in range(calls):
                stub.Compile(request, timeout=600.0)
            return ((time.thread_time() - thread) / calls * 1000, (time.process_time() - process) / calls * 1000)
    finally:
        server.stdin.close()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--delay", type=float, action="append", help="s the helper takes (repeat)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    delays = args.delay or [0.0, 0.08]
    results: dict[float, list[tuple[float, float]]] = {d: [] for d in delays}
    for r in range(args.rounds):
        for delay in (delays if r % 2 == 0 else delays[::-1]):
            results[delay].append(measure(delay, args.calls))
    for delay, runs in results.items():
        print(f"helper takes {delay * 1000:4.0f} ms: calling thread {statistics.median(t for t, _ in runs):.3f} ms, "
              f"client process {statistics.median(p for _, p in runs):.3f} ms a call (median of {len(runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
