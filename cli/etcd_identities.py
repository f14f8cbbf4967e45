"""`baton up`'s etcd identities: one client certificate per process, its common
name the process's etcd user (cluster.etcd_roles), and the roles set up
through etcd's auth API (lease.auth) before the process starts.

Files, in <dir>/certs/etcd/: root (the local cluster's own client, which
administers etcd), cli (the `baton` command's read-only status path),
coordinator-<name> and agent-<name>; each <identity>.pem and
<identity>-key.pem (0600). docs/etcd-auth.md describes the same for
deployments with their own etcd.
"""
from __future__ import annotations

import os
from pathlib import Path

from cli import certs
from cluster import etcd_roles
from lease import auth
from lease.client import Etcd

ETCD_CLIENTS_DIR = "etcd"
ROOT_IDENTITY = "root"
CLI_IDENTITY = "cli"


class EtcdIdentities:
    """Client certificates and etcd users for one local cluster."""

    def __init__(self, certs_dir: Path, cluster: str, ca_dir: Path | None = None):
        self.certs_dir = Path(certs_dir)
        self.ca_dir = Path(ca_dir) if ca_dir is not None else self.certs_dir  # where the CA's key is
        self.cluster = cluster
        self._set_up: set[str] = set()  # identities whose etcd user and roles exist

    def files(self, identity: str) -> tuple[str, str]:
        """(cert, key) of an identity: "root", "cli", "coordinator-<name>", "agent-<name>"."""
        base = self.certs_dir / ETCD_CLIENTS_DIR / identity
        return f"{base}.pem", f"{base}-key.pem"

    def _issue(self, identity: str, user: str) -> tuple[str, str]:
        files = self.files(identity)
        if not os.path.exists(files[0]):  # a directory started again keeps its certificates
            certs.issue_client_cert(certs.load_ca(self.ca_dir), self.certs_dir / ETCD_CLIENTS_DIR,
                                    identity, user)
        return files

    def issue_base(self) -> None:
        """The certificates needed before etcd runs: root's and the CLI's."""
        self._issue(ROOT_IDENTITY, auth.ROOT)
        self._issue(CLI_IDENTITY, etcd_roles.status_user(self.cluster))

    def set_up(self, etcd: Etcd) -> None:
        """The shared roles, the CLI's user and root, then etcd auth on (etcd: a root client)."""
        auth.apply(etcd, *etcd_roles.cluster_access(self.cluster, [], []))

    def process(self, etcd: Etcd, kind: str, name: str) -> tuple[str, str]:
        """A coordinator's or agent's certificate, its etcd user and roles set up
        first (idempotent; once per identity and run)."""
        identity = f"{kind}-{name}"
        if kind == "coordinator":
            access, user = etcd_roles.cluster_access(self.cluster, [name], []), etcd_roles.coordinator_user
        else:
            access, user = etcd_roles.cluster_access(self.cluster, [], [name]), etcd_roles.agent_user
        if identity not in self._set_up:
            auth.apply(etcd, *access)
            self._set_up.add(identity)
        return self._issue(identity, user(self.cluster, name))
