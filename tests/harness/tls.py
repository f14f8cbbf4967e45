"""Certificates and a TLS-only etcd for tests, made with cli.certs.

`make_test_pki(dir)` issues a CA and one certificate for "localhost" and
127.0.0.1 (serverAuth + clientAuth, so the member uses it for clients and
peers alike). `TlsEtcd(dir).start()` runs a single etcd member that speaks
only https to clients and peers; `.client_url`, `.tls` = {"ca", "cert",
"key"} and `.members` are what tests use.

`TlsEtcd(dir, auth=True)` is etcd as `baton up` runs it (docs/etcd-auth.md):
clients must present a certificate of the CA, and `enable_auth(roles, users)`
sets up etcd users and roles and turns auth on; `connect_kwargs(user)` gives
a client certificate whose common name is that etcd user.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from cli.certs import issue_client_cert, issue_cert, load_ca, make_ca
from lease import auth
from lease.client import connect
from tests.harness.etcd import EtcdMember


def make_test_pki(directory: Path, hostnames: tuple[str, ...] = ("localhost",),
                  ips: tuple[str, ...] = ("127.0.0.1",)) -> dict:
    """A CA plus one leaf certificate: {"ca", "cert", "key"} as str paths."""
    ca = make_ca(directory)
    cert, key = issue_cert(ca, directory, "server", list(hostnames), ips=ips)
    return {"ca": str(ca.cert_path), "cert": str(cert), "key": str(key)}


class TlsEtcd:
    """One etcd member with TLS on its client and peer URLs (no plaintext port)."""

    def __init__(self, tmp: Path, name: str = "tls0", auth: bool = False):
        self.tmp = Path(tmp)
        self.tls = make_test_pki(self.tmp / "pki")
        self.auth = auth
        self.member = EtcdMember(name=name, data_dir=self.tmp / name, tls=self.tls, client_cert_auth=auth)
        self.members = [self.member]
        self._clients = 0

    @property
    def client_url(self) -> str:
        return self.member.client_url

    @property
    def urls(self) -> str:
        return self.client_url

    @property
    def client_port(self) -> int:
        return self.member.client_port

    def start(self) -> "TlsEtcd":
        self.member.start()
        try:
            self.member.wait_ready()
        except Exception:
            self.member.kill()
            raise
        return self

    def stop(self) -> None:
        self.member.stop()

    def connect_kwargs(self, user: str | None = None) -> dict:
        """Keyword arguments for lease.client.connect: the CA, and with a user a
        client certificate whose common name is that user (any name: etcd decides)."""
        kwargs = {"ca_cert": self.tls["ca"]}
        if user is not None:
            self._clients += 1
            cert, key = issue_client_cert(load_ca(self.tmp / "pki"), self.tmp / "clients",
                                          f"client{self._clients}", user)
            kwargs.update(cert=str(cert), key=str(key))
        return kwargs

    def enable_auth(self, roles: Iterable[auth.Role], users: Mapping[str, Iterable[str]]) -> None:
        """Set up these roles and users (lease.auth.apply, as root) and turn etcd auth on."""
        root = connect(self.client_url, timeout=5.0, **self.connect_kwargs(auth.ROOT))
        try:
            auth.apply(root, roles, users)
        finally:
            root.close()
