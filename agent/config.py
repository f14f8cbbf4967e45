"""The agent's configuration: one object, validated when it is built."""
from __future__ import annotations

import dataclasses
import os
import socket

from agent.sandbox import TaskUser, resolve_task_user
from cluster.names import check_name
from lease.client import EtcdConfig
from lease.errors import ConfigError
from lease.session import validate_timings


def agent_version() -> str:
    """The installed Baton version, reported in Hello and the presence key."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("baton")
    except (ImportError, PackageNotFoundError):
        return "0+unknown"


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything an agent needs. Raises ConfigError with one sentence on a bad value."""

    name: str
    cores: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    group: str = "default"
    workdir: str | None = None          # default ./baton-agent-<name>
    etcd: EtcdConfig = dataclasses.field(default_factory=EtcdConfig)
    cluster: str = "default"
    agent_token: str | None = None      # the cluster token; None sends none
    grpc_ca: str | None = None          # CA file for TLS to coordinators; None = plaintext
    # This agent's client certificate and key (cli/certs.py issue_agent_cert): with TLS on,
    # coordinators accept a Hello only for the name it carries (docs/design.md section 9).
    tls_cert: str | None = None
    tls_key: str | None = None
    lease_ttl: int = 10
    task_timeout: float = 3600.0        # for assignments that give none
    host: str = dataclasses.field(default_factory=socket.gethostname)
    # Whom tasks run as: None = `nobody` for a root agent, else the agent itself (agent/sandbox.py).
    task_user: str | None = None
    helper_listen: str | None = None    # HOST:PORT of the Helper service (compile jobs); None: none

    def __post_init__(self) -> None:
        check_name("agent", self.name)
        check_name("cluster", self.cluster)
        if not isinstance(self.cores, int) or self.cores < 1:
            raise ConfigError(f"cores must be a whole number >= 1, got {self.cores!r}")
        if not self.group:
            raise ConfigError("group must not be empty")
        validate_timings(self.lease_ttl, self.lease_ttl * 2 / 3, self.lease_ttl / 3)
        if not self.task_timeout > 0:
            raise ConfigError(f"task timeout must be > 0 seconds, got {self.task_timeout}")
        if self.grpc_ca is not None and not os.path.isfile(self.grpc_ca):
            raise ConfigError(f"gRPC CA certificate {self.grpc_ca!r} does not exist")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        if self.tls_cert and self.grpc_ca is None:
            raise ConfigError("--tls-cert needs --grpc-ca (the client certificate is for TLS to the coordinators)")
        for what, path in (("certificate", self.tls_cert), ("key", self.tls_key)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"the agent's TLS {what} {path!r} does not exist")
        if self.agent_token is not None and not self.agent_token.strip():
            raise ConfigError("the agent token is empty")
        if self.helper_listen is not None and not self.helper_listen.rpartition(":")[2].isdigit():
            raise ConfigError(f"--helper-listen wants HOST:PORT, got {self.helper_listen!r}")
        if self.helper_listen is not None and self.grpc_ca is not None and not self.tls_cert:
            # With TLS on, the Helper service serves only with TLS and this agent's certificate.
            raise ConfigError("--helper-listen with --grpc-ca needs --tls-cert and --tls-key (the agent's "
                              "certificate, which its compile-job service serves with), or --helper-listen none")
        workdir = self.workdir or f"baton-agent-{self.name}"
        object.__setattr__(self, "workdir", os.path.abspath(workdir))
        resolve_task_user(self.task_user)  # refuse a user this agent cannot switch to, now

    def resolved_task_user(self) -> TaskUser | None:
        """The user tasks run as; None when it is the agent's own."""
        return resolve_task_user(self.task_user)

    def root_certificates(self) -> bytes | None:
        return _read(self.grpc_ca)

    def client_certificate(self) -> tuple[bytes, bytes] | None:
        """(private key, certificate chain) PEM for TLS to the coordinators, or None."""
        return (_read(self.tls_key), _read(self.tls_cert)) if self.tls_cert else None

    def helper_tls(self) -> tuple[bytes, bytes, bytes] | None:
        """(private key, certificate chain, CA) PEM the Helper service serves TLS with, or
        None for plaintext (the whole cluster runs without TLS; docs/design.md section 8)."""
        client = self.client_certificate()
        return (*client, self.root_certificates()) if client else None

    def helper_cert_problem(self) -> str | None:
        """Why initiators would refuse the Helper service's TLS with this agent's
        certificate (cluster/agent_certs.py), or None (also without TLS)."""
        if not self.tls_cert:
            return None
        from cluster.agent_certs import helper_cert_problem

        return helper_cert_problem(_read(self.tls_cert), self.name)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
