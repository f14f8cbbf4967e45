"""A small certificate authority, so encryption works without outside tools.

docs/design.md section 1: "Certificates name the coordinator's host name, not its IP
address; Baton can issue them." `make_ca` creates a local CA (ca.pem and
ca-key.pem); `issue_cert` signs ECDSA P-256 certificates whose
SubjectAltName carries the host names (and, only when asked, IP addresses),
usable for both ends of a TLS link (serverAuth + clientAuth), so the same
file serves an etcd member, a coordinator's gRPC and HTTPS listeners, and
an etcd peer or client certificate.

Private keys are written with mode 0600 from the start (never world-readable
for a moment). Problems a user can fix (missing files, a bad IP address, no
host name) raise lease.errors.ConfigError with one sentence.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.agent_certs import helper_cert_problem
from cluster.names import AGENT_URI_PREFIX, ANY_AGENT, ANY_AGENT_SERVER_NAME, agent_server_name, check_name
from lease.errors import ConfigError

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_VALID_DAYS = 3650
# 825 days is the longest validity macOS/iOS accept for certificates of a
# private CA; browsers and Go accept it too.
CERT_VALID_DAYS = 825
# Tolerate a little clock skew between the machine that issues and the one
# that verifies.
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CA:
    """A loaded certificate authority: its certificate, key and file paths."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600, also when the file already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(directory: str | os.PathLike, name: str = "Baton local CA",
            valid_days: int = CA_VALID_DAYS) -> CA:
    """Create a new CA in directory (ca.pem, ca-key.pem 0600); replaces an existing one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Baton")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        # path_length=0: this CA signs leaf certificates only.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CA(cert=cert, key=key, cert_path=cert_path, key_path=key_path)


def load_ca(directory: str | os.PathLike) -> CA:
    """Load the CA that make_ca wrote in directory; ConfigError if absent or unreadable."""
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if not path.is_file():
            raise ConfigError(f"no certificate authority in {directory}: {path.name} is missing")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the certificate authority in {directory} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the CA key {key_path} is not an ECDSA key")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ConfigError(f"the CA key {key_path} does not belong to {cert_path}")
    return CA(cert=cert, key=key, cert_path=cert_path, key_path=key_path)


def _parse_ips(ips: Iterable[str]) -> list[x509.IPAddress]:
    out = []
    for ip in ips:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(str(ip))))
        except ValueError:
            raise ConfigError(f"{ip!r} is not an IP address") from None
    return out


def issue_cert(ca: CA, directory: str | os.PathLike, basename: str, hostnames: list[str],
               ips: Iterable[str] | None = (), valid_days: int = CERT_VALID_DAYS) -> tuple[Path, Path]:
    """Sign a certificate for hostnames (+ ips) with ca.

    Writes <basename>.pem and <basename>-key.pem (0600) in directory and
    returns (cert_path, key_path). The first host name is also the subject's
    common name. Raises ConfigError when no host name is given.
    """
    hostnames = [h.strip() for h in hostnames if h and h.strip()]
    if not hostnames:
        raise ConfigError("a certificate needs at least one host name (certificates name hosts, "
                          "not IP addresses)")
    if not basename or "/" in basename or basename.startswith("."):
        raise ConfigError(f"certificate file name {basename!r} must be a plain file name")
    for host in hostnames:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue
        raise ConfigError(f"{host!r} is an IP address; pass it in ips, and name the host")
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += _parse_ips(ips or ())

    return _sign(ca, directory, basename, hostnames[0], alt_names,
                 [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], valid_days)


def agent_identity(name: str) -> str:
    """The SubjectAltName URI that names Baton agent `name` in its client certificate."""
    return f"{AGENT_URI_PREFIX}{name}"


def issue_agent_cert(ca: CA, directory: str | os.PathLike, name: str,
                     valid_days: int = CERT_VALID_DAYS, any_name: bool = False) -> tuple[Path, Path]:
    """Sign agent `name`'s certificate (docs/design.md section 9): its common
    name and SubjectAltNames (URI `urn:baton:agent:name`, which coordinators
    check of its streams, and DNS `agent_server_name(name)`, which initiators
    check of its Helper service) name the agent. It is good for clientAuth
    and serverAuth, but names no host, so it cannot serve as a coordinator.
    Writes agent-<name>.pem and agent-<name>-key.pem (0600) in directory;
    ConfigError when name breaks the naming rules. any_name: the certificate
    grants every agent name instead (cluster.names.ANY_AGENT and
    ANY_AGENT_SERVER_NAME), for the replicas of a scaled agent service."""
    check_name("agent", name)
    identity = agent_identity(ANY_AGENT if any_name else name)  # any_name: a pool certificate
    server_name = ANY_AGENT_SERVER_NAME if any_name else agent_server_name(name)
    return _sign(ca, directory, f"agent-{name}", name,
                 [x509.DNSName(server_name), x509.UniformResourceIdentifier(identity)],
                 [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH], valid_days)


def serves_compile_jobs(cert_path: str | os.PathLike, name: str | None = None) -> bool:
    """Whether an agent certificate is one the Helper service can serve with
    (issued with serverAuth and agent `name`'s server name; older ones were clientAuth only)."""
    return helper_cert_problem(Path(cert_path).read_bytes(), name) is None


def _sign(ca: CA, directory: str | os.PathLike, basename: str, common_name: str,
          alt_names: list[x509.GeneralName], usages: list, valid_days: int) -> tuple[Path, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=valid_days), ca.cert.not_valid_after_utc)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
    )
    if alt_names:  # a client identity (an etcd user) has none
        cert = cert.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = cert.sign(ca.key, hashes.SHA256())
    cert_path = directory / f"{basename}.pem"
    key_path = directory / f"{basename}-key.pem"
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_client_cert(ca: CA, directory: str | os.PathLike, basename: str, common_name: str,
                      valid_days: int = CERT_VALID_DAYS) -> tuple[Path, Path]:
    """Sign a client-only certificate (clientAuth, no host names) whose common name is
    an identity, e.g. the etcd user a process is (docs/etcd-auth.md). Writes
    <basename>.pem and <basename>-key.pem (0600); returns (cert_path, key_path)."""
    if not basename or "/" in basename or basename.startswith("."):
        raise ConfigError(f"certificate file name {basename!r} must be a plain file name")
    if not 0 < len(common_name) <= 64:
        raise ConfigError(f"a certificate's common name holds 1-64 characters, not {len(common_name)}")
    return _sign(ca, directory, basename, common_name, [], [ExtendedKeyUsageOID.CLIENT_AUTH], valid_days)
