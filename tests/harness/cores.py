"""Fixed core sources for a JobServer (cli/job_server.py) in tests that run no leader:
the two verbs of cli.core_client.CoreSource, answered without etcd or a coordinator; and
one job through such a JobServer."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cli.core_client import CoreSource
from cli.job_server import JobServer
from cluster.protocol import compile_pb2 as pb


class LocalCores(CoreSource):
    """No helper core: every job is answered "compile it locally"."""

    def acquire_core(self, wait=None):
        return None, -1, "no helper in this test"

    def release(self, grant, slot=-1):
        raise AssertionError("no grant was given")


class OneGrant(CoreSource):
    """One grant of the helper at `helper` (host:port), lent to every job at slot 0."""

    def __init__(self, helper: str, *, agent: str = "a1", grant: str = "g1", epoch: int = 5, slots: int = 4):
        self.grant = pb.Grant(agent=agent, helper=helper, slots=slots, grant=grant, epoch=epoch)
        self.helpers_used: set[str] = set()

    def acquire_core(self, wait=None):
        return self.grant, 0, ""

    def release(self, grant, slot=-1):
        pass


def job_through_initiator(workdir: Path, cores: CoreSource, **server_options) -> dict:
    """`gcc -O2 -c a.c` (a.c written in `workdir`) through the initiator's JobServer in a run
    directory of its own: where the job went ({"helper", "exit_code", "core"} or {"local"}),
    after checking that a remote job says when it held its core."""
    (workdir / "a.c").write_bytes(b"int f(void) { return 42; }\n")
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    jobs = JobServer(str(run_dir), cores, wait=1.0, **server_options).start()
    try:
        reply = jobs.compile({"argv": [shutil.which("gcc"), "-O2", "-c", "a.c", "-o", "a.o"], "cwd": str(workdir),
                              "env": dict(os.environ)})
    finally:
        jobs.stop()
    if "helper" in reply:
        assert reply["core_started_ms"] <= reply["core_finished_ms"] and reply["object"], reply
    return {k: reply[k] for k in ("helper", "exit_code", "core", "local") if k in reply}
