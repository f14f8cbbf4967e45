"""The initiator of `baton run` (docs/design.md section 8): its two halves together.

`Initiator` starts a `CoreClient` (cli/core_client.py: the grants, from the
leader, and the build's record) and a `JobServer` (cli/job_server.py: the
build's `baton cc` processes, whose jobs it sends to helpers or answers
"compile it locally"), and stops them. `Farm` is how it reaches the cluster
(its `wait`: cli.core_client.remote_wait).
"""

from __future__ import annotations

import dataclasses

from cli.core_client import CoreClient
from cli.job_server import JobServer
from cli.run_report import RunReport
from lease.client import EtcdConfig


@dataclasses.dataclass(frozen=True)
class Farm:
    """How `baton run` reaches the cluster (from the CLI's options)."""

    etcd: EtcdConfig
    cluster: str = "default"
    token: str | None = None               # the cluster token (agents' --agent-token-file)
    root_certificates: bytes | None = None  # the CA of the coordinators' gRPC TLS
    wait: float | None = None              # s a job waits for a free helper core; None: core_client.remote_wait()
    client: tuple[bytes, bytes] | None = None  # (key, certificate): TLS coordinators require one


class Initiator:
    """Both halves for one `baton run`: `start()`, `stop()`, `helpers_used`."""

    def __init__(self, farm: Farm, build: str, run_dir: str, cap: int | None = None,
                 command: list[str] | None = None):
        self.report = RunReport(build, list(command or []), run_dir)
        self.cores = CoreClient(farm.etcd, farm.cluster, build, farm.token, farm.root_certificates, cap,
                                client=farm.client, report=self.report, wait=farm.wait)
        self.jobs = JobServer(run_dir, self.cores, farm.wait, farm.root_certificates, farm.client)

    def start(self) -> "Initiator":
        self.cores.start()
        self.jobs.start()
        return self

    def finish(self, exit_code: int, wall: float, figures: dict) -> bool:
        """COMMAND exited: report the end; True once the cluster recorded the build."""
        return self.cores.finish(exit_code, wall, figures)

    def stop(self) -> None:
        self.jobs.stop()
        self.cores.stop()
