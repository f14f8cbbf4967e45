"""cli.certs: certificates that real TLS handshakes accept by host name."""
from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cli.certs import issue_cert, load_ca, make_ca
from lease.errors import ConfigError


class _TlsServer:
    """A one-thread TLS server on loopback that answers b"ok" after the handshake."""

    def __init__(self, cert, key, client_ca=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(str(client_ca))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.errors: list[Exception] = []
        self.peer_names: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            raw.settimeout(10)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    peer = tls.getpeercert()
                    if peer:
                        self.peer_names.append(dict(x[0] for x in peer["subject"])["commonName"])
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(exc)
                raw.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in _serve
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(tmp_path / "ca")
    cert, key = issue_cert(ca, tmp_path / "certs", "server", ["localhost"], ips=["127.0.0.1"])
    return ca, cert, key


def _client_hello(port, ca_path, server_hostname, cert=None, key=None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca_path))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.recv(2)


def test_handshake_verifies_by_host_name(pki):
    ca, cert, key = pki
    server = _TlsServer(cert, key)
    try:
        assert _client_hello(server.port, ca.cert_path, "localhost") == b"ok"
    finally:
        server.close()


def test_handshake_fails_for_wrong_host_name(pki):
    ca, cert, key = pki
    server = _TlsServer(cert, key)
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname|match"):
            _client_hello(server.port, ca.cert_path, "build-server.example")
    finally:
        server.close()


def test_handshake_fails_against_another_ca(pki, tmp_path):
    _, cert, key = pki
    other = make_ca(tmp_path / "other")
    server = _TlsServer(cert, key)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            _client_hello(server.port, other.cert_path, "localhost")
    finally:
        server.close()


def test_same_certificate_works_as_client_certificate(pki, tmp_path):
    ca, cert, key = pki
    agent_cert, agent_key = issue_cert(ca, tmp_path / "certs", "agent", ["agent1.local"])
    server = _TlsServer(cert, key, client_ca=ca.cert_path)
    try:
        assert _client_hello(server.port, ca.cert_path, "localhost", agent_cert, agent_key) == b"ok"
        assert server.peer_names == ["agent1.local"]
    finally:
        server.close()


def test_certificate_contents(pki):
    ca, cert_path, _ = pki
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.issuer == ca.cert.subject
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 300 < lifetime.days <= 826
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ip_addresses_only_when_asked(tmp_path):
    ca = make_ca(tmp_path)
    cert_path, _ = issue_cert(ca, tmp_path, "coord", ["coord1.example", "coord1"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord1.example", "coord1"]
    assert san.get_values_for_type(x509.IPAddress) == []


def test_private_keys_are_owner_only(pki):
    ca, _, key = pki
    for path in (ca.key_path, key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(ca.cert_path).st_mode) == 0o644


def test_load_ca_issues_certificates_the_original_verifies(pki, tmp_path):
    ca, _, _ = pki
    loaded = load_ca(ca.cert_path.parent)
    assert loaded.cert == ca.cert
    cert, key = issue_cert(loaded, tmp_path / "later", "server2", ["localhost"])
    server = _TlsServer(cert, key)
    try:
        assert _client_hello(server.port, ca.cert_path, "localhost") == b"ok"
    finally:
        server.close()


def test_load_ca_missing_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="ca.pem is missing"):
        load_ca(tmp_path)


def test_load_ca_rejects_a_key_of_another_ca(tmp_path):
    a = make_ca(tmp_path / "a")
    b = make_ca(tmp_path / "b")
    (tmp_path / "a" / "ca-key.pem").write_bytes(b.key_path.read_bytes())
    with pytest.raises(ConfigError, match="does not belong"):
        load_ca(a.cert_path.parent)


@pytest.mark.parametrize("hostnames, ips, message", [
    ([], (), "at least one host name"),
    (["", "  "], (), "at least one host name"),
    (["127.0.0.1"], (), "is an IP address"),
    (["localhost"], ["not-an-ip"], "is not an IP address"),
])
def test_issue_cert_refuses_bad_names(tmp_path, hostnames, ips, message):
    ca = make_ca(tmp_path)
    with pytest.raises(ConfigError, match=message):
        issue_cert(ca, tmp_path, "server", hostnames, ips=ips)


def test_an_agent_certificate_names_the_agent_for_client_auth_only(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from cli.certs import issue_agent_cert, make_ca
    from lease.errors import ConfigError

    ca = make_ca(tmp_path)
    cert_path, key_path = issue_agent_cert(ca, tmp_path, "a1")
    assert cert_path.name == "agent-a1.pem" and key_path.stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:baton:agent:a1"]
    # Its Helper service serves with it (docs/design.md section 8), under a server
    # name that no host certificate carries: the agent's name in hex, in .invalid.
    assert san.get_values_for_type(x509.DNSName) == ["6131.agents.baton.invalid"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(ConfigError):
        issue_agent_cert(ca, tmp_path, "../../x")


def test_a_pool_agent_certificate_grants_any_agent_name(tmp_path):
    from cryptography import x509

    from cli.certs import issue_agent_cert, make_ca

    cert_path, _ = issue_agent_cert(make_ca(tmp_path / "ca"), tmp_path, "agent", any_name=True)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == ["urn:baton:agent:*"]
    dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert dns == ["*.agents.baton.invalid"]
