"""A bench.pool.AgentPool in a child process of a benchmark (`python -m bench.pool`),
with the local cluster's agent token and, with TLS, its CA for etcd and gRPC and
the credentials a scaled agent service has (docker-compose.yml; docs/etcd-auth.md):
a pool client certificate good for any agent name (cli.certs any_name), which the
coordinators require on gRPC, and the shared agent-pool etcd user (cluster.etcd_roles),
which may write any key under agents/ and read the leader and coordinators keys.
So `bench/failover.py --tls` runs with the checks `baton up` runs with."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from cli import certs, etcd_setup
from cli.local import LocalCluster
from cli.processes import Proc
from cluster import etcd_roles
from lease import auth

ROOT = Path(__file__).resolve().parent.parent
POOL_CERT = "bench-pool"   # certs/agent-bench-pool.pem: the gRPC pool certificate
POOL_ETCD_DIR = "etcd-agent-pool"   # certs/etcd-agent-pool/etcd.pem: the agent-pool etcd user


def pool_credentials(cluster: LocalCluster) -> list[str]:
    """The pool's flags for the cluster's TLS and etcd auth, issued (once per
    directory) and, for etcd, its user and roles set up through the cluster's
    root client: [] for a cluster without either."""
    args = []
    if cluster.etcd_tls:
        args += ["--etcd-ca", cluster.etcd_ca]
    if cluster.etcd_auth:
        directory = cluster.certs_dir / POOL_ETCD_DIR
        etcd_setup.issue(cluster.ca_dir, cluster.cluster, [f"{etcd_roles.AGENT_POOL}={directory}"])
        auth.apply(cluster.etcd(), *etcd_roles.cluster_access(cluster.cluster, [], [], agent_pool=True))
        args += ["--etcd-cert", str(directory / etcd_setup.CERT_FILE),
                 "--etcd-key", str(directory / etcd_setup.KEY_FILE)]
    if cluster.tls:
        cert, key = cluster.certs_dir / f"agent-{POOL_CERT}.pem", cluster.certs_dir / f"agent-{POOL_CERT}-key.pem"
        if not (cert.exists() and key.exists()):
            cert, key = certs.issue_agent_cert(certs.load_ca(cluster.ca_dir), cluster.certs_dir, POOL_CERT,
                                               any_name=True)
        args += ["--ca", cluster.ca, "--tls-cert", str(cert), "--tls-key", str(key)]
    return args


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
                "--prefix", prefix, "--task-seconds", str(task_seconds)] + pool_credentials(cluster)
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
