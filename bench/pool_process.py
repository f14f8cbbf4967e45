"""A bench.pool.AgentPool in a child process of a benchmark (`python -m bench.pool`),
with the local cluster's agent token and, with TLS, its CA for etcd and gRPC."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from cli.local import LocalCluster
from cli.processes import Proc

ROOT = Path(__file__).resolve().parent.parent


class PoolProcess:
    """`count` pool agents in their own interpreter (its own interpreter lock).
    The process is a cli.processes.Proc: `stop()`, `log_tail()`, `alive`."""

    def __init__(self, cluster: LocalCluster, count: int, cores: int = 1, on_link=None,
                 prefix: str = "bench-agent-", task_seconds: float = 0.0):
        """on_link(t, agent, coordinator, epoch, standby), if given, is called (on a reader thread)
        whenever an agent's stream is welcomed or lost (coordinator and epoch None) or its standby
        stream changes (standby: the coordinator it stands by for, or None); t on time.monotonic()."""
        # --agent-token=: a random token may begin with "-", which argparse would take for an option.
        argv = [sys.executable, "-m", "bench.pool", "--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
                "--count", str(count), "--cores", str(cores), f"--agent-token={cluster.agent_token}",
                "--prefix", prefix, "--task-seconds", str(task_seconds)]
        if cluster.ca:
            argv += ["--ca", cluster.ca]
        if on_link:
            argv.append("--report-links")
        name = f"pool-{prefix.strip('-')}"
        self.proc = Proc(name, argv, cluster.dir / "logs" / f"{name}.log",
                         env={"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        self.proc.start(pipe_stdout=bool(on_link))
        self.log_tail = self.proc.log_tail
        if on_link:
            threading.Thread(target=self._read_links, args=(on_link,), name="pool links", daemon=True).start()

    def _read_links(self, on_link) -> None:
        """The lines of bench.pool.report_links."""
        for line in self.proc.popen.stdout:
            t, name, coordinator, epoch, standby = line.decode().split()
            on_link(float(t), name, None if coordinator == "-" else coordinator,
                    None if epoch == "-" else int(epoch), None if standby == "-" else standby)

    @property
    def alive(self) -> bool:
        return self.proc.alive

    def stop(self, timeout: float = 20) -> None:
        self.proc.stop(timeout)  # 200 agents take a while to close their streams and revoke the lease
