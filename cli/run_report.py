"""What `baton run` reports to the leader about its build (docs/design.md section 8).

The build's start, each finished job and the end go over the initiator's
Cores stream (compile.proto CoreRequest; the coordinator's side is
coordinator/runtime/run_records.py). The jobs come from the run's job log,
which every `baton cc` appends one line to (cli/cc.py): `poll()` reads the
lines added since the last call and numbers them 1, 2, ... (the job's
sequence number: its key in etcd and its acknowledgement).

A report is kept until the leader acknowledges it as durable (CoreGrants.acked)
and sent again, with the start, on every new stream — to the next leader after
a failover; the end is kept until CoreGrants.ended. Thread-safe.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from cli.cc import JOBS_LOG
from cluster.protocol import compile_pb2 as pb

log = logging.getLogger(__name__)

JOBS_PER_REQUEST = 200   # reports per CoreRequest (~100 bytes each: far below gRPC's 4 MB)


def job_report(seq: int, job: dict) -> pb.JobReport:
    """One line of the job log (cli/cc.py) as a report."""
    helper = str(job.get("helper") or "local")
    remote = helper != "local"
    code = job.get("exit_code")
    return pb.JobReport(seq=seq, source=str(job.get("source") or ""), helper=helper,
                        core=int(job.get("core") or 0) if remote else 0, started=float(job.get("started") or 0),
                        finished=float(job.get("finished") or 0), exit_code=int(code if code is not None else -1),
                        remote=remote, why_local="" if remote else str(job.get("why_local") or ""),
                        compiler=str(job.get("compiler") or ""),
                        core_started=float(job.get("core_started") or 0) if remote else 0,
                        core_finished=float(job.get("core_finished") or 0) if remote else 0)


class RunReport:
    """`poll()` -> the new reports; `requests(cores)` for a new stream; `acknowledge(reply)`;
    `finish(exit_code, wall, figures)` -> the end's request; `complete` once the end is durable."""

    def __init__(self, build: str, command: list[str], run_dir: str, host: str | None = None,
                 started: float | None = None):
        self.build = build
        self.start = pb.RunStart(command=command, host=host or socket.gethostname(),
                                 started=started if started is not None else time.time())
        self._log = os.path.join(run_dir, JOBS_LOG)
        self._lock = threading.Lock()
        self._offset = 0
        self._partial = b""
        self._seq = 0
        self._unacked: dict[int, pb.JobReport] = {}
        self.end: pb.RunEnd | None = None
        self.complete = False   # the leader recorded the end (and so every job)

    def poll(self) -> list[pb.JobReport]:
        """The jobs finished since the last poll (kept until acknowledged)."""
        try:
            with open(self._log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        with self._lock:
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()   # a line being written (each is one write, but be safe)
            new = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    job = json.loads(line)
                except ValueError:
                    log.warning("baton run: a line of the job log is not JSON: %.200r", line)
                    continue
                self._seq += 1
                report = self._unacked[self._seq] = job_report(self._seq, job)
                new.append(report)
            return new

    def requests(self, cores: int) -> list[pb.CoreRequest]:
        """Everything not yet acknowledged, for a new stream: the start first."""
        with self._lock:
            pending = [self._unacked[seq] for seq in sorted(self._unacked)]
            chunks = [pending[i:i + JOBS_PER_REQUEST] for i in range(0, len(pending), JOBS_PER_REQUEST)] or [[]]
            out = [pb.CoreRequest(build=self.build, cores=cores, jobs=chunk) for chunk in chunks]
            out[0].start.CopyFrom(self.start)
            if self.end is not None:
                out[-1].end.CopyFrom(self.end)
            return out

    def jobs_request(self, jobs: list[pb.JobReport], cores: int) -> list[pb.CoreRequest]:
        return [pb.CoreRequest(build=self.build, cores=cores, jobs=jobs[i:i + JOBS_PER_REQUEST])
                for i in range(0, len(jobs), JOBS_PER_REQUEST)]

    def acknowledge(self, reply: pb.CoreGrants) -> None:
        with self._lock:
            for seq in reply.acked:
                self._unacked.pop(seq, None)
            if reply.ended:
                self.complete = True
                self._unacked.clear()

    def finish(self, exit_code: int, wall: float, figures: dict) -> pb.RunEnd:
        """The end (COMMAND exited); `figures` as cli.run.summary counts them."""
        with self._lock:
            self.end = pb.RunEnd(exit_code=exit_code, wall=wall, finished=time.time(),
                                 jobs=int(figures.get("jobs", self._seq)), remote=int(figures.get("remote", 0)),
                                 failed=int(figures.get("failed", 0)))
            return self.end

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._unacked)


def run_summary(build: dict) -> str:
    """`baton build show` of a `baton run` build: what ran where, one line per job."""
    c = build.get("counts") or {}
    code = build.get("exit_code")
    lines = [f"{build['id']} run: {build.get('name') or ''}: {build['state']}"
             + (f" (exit {code}, wall {build.get('wall')} s)" if code is not None else "")
             + (f" — {build['reason']}" if build.get("reason") else ""),
             f"  on {build.get('host') or '?'}: {c.get('total', 0)} jobs, {c.get('remote', 0)} remote, "
             f"{c.get('local', 0)} local, {c.get('failed', 0)} failed"]
    for j in build.get("jobs", []):
        where = j["helper"] if not j.get("remote") else f"{j['helper']}/{j.get('core')}"
        lines.append(f"  {j['seq']:>5} {j.get('source') or '-':<40} {where:<12} {j.get('duration', 0):>7.2f} s "
                     f"exit {j['exit_code']}" + (f"  ({j['why_local']})" if j.get("why_local") else ""))
    return "\n".join(lines)
