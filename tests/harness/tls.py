"""Certificates and a TLS-only etcd for tests, made with cli.certs.

`make_test_pki(dir)` issues a CA and one certificate for "localhost" and
127.0.0.1 (serverAuth + clientAuth, so the member uses it for clients and
peers alike). `TlsEtcd(dir).start()` runs a single etcd member that speaks
only https to clients and peers; `.client_url`, `.tls` = {"ca", "cert",
"key"} and `.members` are what tests use.
"""
from __future__ import annotations

from pathlib import Path

from cli.certs import issue_cert, make_ca
from tests.harness.etcd import EtcdMember


def make_test_pki(directory: Path, hostnames: tuple[str, ...] = ("localhost",),
                  ips: tuple[str, ...] = ("127.0.0.1",)) -> dict:
    """A CA plus one leaf certificate: {"ca", "cert", "key"} as str paths."""
    ca = make_ca(directory)
    cert, key = issue_cert(ca, directory, "server", list(hostnames), ips=ips)
    return {"ca": str(ca.cert_path), "cert": str(cert), "key": str(key)}


class TlsEtcd:
    """One etcd member with TLS on its client and peer URLs (no plaintext port)."""

    def __init__(self, tmp: Path, name: str = "tls0"):
        self.tmp = Path(tmp)
        self.tls = make_test_pki(self.tmp / "pki")
        self.member = EtcdMember(name=name, data_dir=self.tmp / name, tls=self.tls)
        self.members = [self.member]

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

    def connect_kwargs(self) -> dict:
        """Keyword arguments for lease.client.connect (CA only: no client cert needed)."""
        return {"ca_cert": self.tls["ca"]}
