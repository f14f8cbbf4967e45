"""What does TLS cost on the data path of `baton run` (docs/design.md section 8)?

    python -m bench.helper_tls [--jobs 200] [--json]

Two Helper services of agent/helper.py in this process, one plaintext (a
--no-tls cluster) and one TLS (the agent's certificate, client certificates
of the cluster CA required), each holding one grant; the initiator's side is
cli.job_server.JobServer, whose one channel per helper carries every job.
The job is a real one: a C source including <stdio.h>, <stdlib.h> and
<string.h>, scanned and packed as `baton cc` does (its headers shipped).
Measured per job, the modes alternating job by job, median and p99:

1. `job`: JobServer.compile, initiator to object, the compile included;
2. `transport`: the same request over the same channel, refused by the
   helper at once (another compiler identity): the RPC and its payload;
3. `new channel`: `transport` on a fresh channel each time (TCP connect and,
   with TLS, the handshake): what reusing the channel saves per job.

Client and helpers share this process (and its GIL), so figures are the
path's overhead on this machine, not a network's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from agent.helper import Grants, HelperServer
from cli import certs
from cli.cc_args import plan
from cli.compile_scan import pack, scan
from cli.job_server import JobServer
from cluster.names import agent_server_name
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc
from tests.harness.cores import OneGrant

SOURCE = """#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    char *copy = strdup(argc > 1 ? argv[1] : "baton");
    printf("%zu %s\\n", strlen(copy), copy);
    free(copy);
    return 0;
}
"""


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


class Mode:
    """One helper (plaintext or TLS) and the initiator's JobServer in front of it."""

    def __init__(self, name: str, tmp: Path, tls: tuple[bytes, bytes, bytes] | None,
                 client: tuple[bytes, bytes] | None):
        self.name = name
        grants = Grants()
        grants.lend("g1", 1, 1)
        self.helper = HelperServer("127.0.0.1:0", grants, lambda: 1, workers=2, tls=tls)
        self.helper.start()
        run_dir = tmp / f"run-{name}"
        run_dir.mkdir()
        ca = tls[2] if tls else None
        self.jobs = JobServer(str(run_dir), OneGrant(self.helper.address("unused"), agent="h1", epoch=1, slots=1),
                              1.0, ca, client).start()
        self.credentials = grpc.ssl_channel_credentials(ca, *client) if tls else None
        self.times: dict[str, list[float]] = {"job": [], "transport": [], "new channel": []}

    def fresh_channel(self) -> grpc.Channel:
        address = self.helper.address("unused")
        if self.credentials is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, self.credentials,
                                   options=[("grpc.ssl_target_name_override", agent_server_name("h1"))])

    def stop(self) -> None:
        self.jobs.stop()
        self.helper.stop()


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per mode and measure (default 200)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    if not shutil.which("gcc"):
        print("needs gcc", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="baton-helper-tls-") as tmp:
        tmp = Path(tmp)
        ca = certs.make_ca(tmp / "ca")
        cert, key = certs.issue_agent_cert(ca, tmp / "certs", "h1")
        ccert, ckey = certs.issue_agent_cert(ca, tmp / "certs", "initiator")
        tls = (key.read_bytes(), cert.read_bytes(), ca.cert_path.read_bytes())
        client = (ckey.read_bytes(), ccert.read_bytes())

        project = tmp / "project"
        project.mkdir()
        (project / "s.c").write_text(SOURCE)
        argv = [shutil.which("gcc"), "-O2", "-c", "s.c", "-o", "s.o"]
        decided = plan(argv)
        job = pack(decided, str(project), scan(decided, str(project)))
        paths = list(job.files)
        header = {"compiler": decided.compiler, "args": list(job.args), "source": job.source, "cwd": job.cwd,
                  "paths": paths, "system_dirs": list(job.system_dirs)}
        blobs = [job.files[p] for p in paths]
        # What `baton cc` sends the initiator's job server (cli/ccwire.py).
        request = {"argv": argv, "cwd": str(project), "env": dict(os.environ)}
        refused = pb.CompileRequest(grant="g1", epoch=1, compiler="gcc", compiler_identity="0" * 64,
                                    args=header["args"], source=job.source, cwd=job.cwd,
                                    files=[pb.SourceFile(path=p, content=c) for p, c in zip(paths, blobs)],
                                    system_dirs=header["system_dirs"])

        modes = [Mode("plaintext", tmp, None, None), Mode("tls", tmp, tls, client)]
        try:
            for mode in modes:   # warm up: the channel, the compiler identity caches
                reply = mode.jobs.compile(request)
                assert reply.get("exit_code") == 0, reply
            for i in range(args.jobs):
                for mode in modes if i % 2 else modes[::-1]:
                    elapsed, reply = timed(lambda: mode.jobs.compile(request))
                    assert reply.get("exit_code") == 0, reply
                    mode.times["job"].append(elapsed)
                    stub = mode.jobs._stub(mode.helper.address("unused"), "h1")
                    elapsed, answer = timed(lambda: stub.Compile(refused, timeout=30))
                    assert answer.refused, answer
                    mode.times["transport"].append(elapsed)
                    channel = mode.fresh_channel()
                    with channel:
                        elapsed, answer = timed(lambda: compile_pb2_grpc.HelperStub(channel).Compile(
                            refused, timeout=30))
                    assert answer.refused, answer
                    mode.times["new channel"].append(elapsed)
        finally:
            for mode in modes:
                mode.stop()

    figures = {"jobs": args.jobs, "job_files": len(paths), "job_bytes": sum(map(len, blobs)),
               "python": sys.version.split()[0], "grpc": grpc.__version__, "cpus": os.cpu_count()}
    for mode in modes:
        for what, values in mode.times.items():
            figures[f"{mode.name} {what}"] = {"median_ms": round(statistics.median(values) * 1000, 2),
                                              "p99_ms": round(p99(values) * 1000, 2)}
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{args.jobs} jobs per mode; each ships {figures['job_files']} files, {figures['job_bytes']} bytes")
    print(f"{'':<14}{'plaintext median/p99 ms':>26}{'tls median/p99 ms':>22}{'tls - plain (median)':>22}")
    for what in modes[0].times:
        plain, tls_ = figures[f"plaintext {what}"], figures[f"tls {what}"]
        print(f"{what:<14}{plain['median_ms']:>14.2f} / {plain['p99_ms']:<9.2f}"
              f"{tls_['median_ms']:>11.2f} / {tls_['p99_ms']:<9.2f}"
              f"{tls_['median_ms'] - plain['median_ms']:>+12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
