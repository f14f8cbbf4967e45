"""Whether an agent's certificate can serve its Helper service (docs/design.md section 8).

Initiators accept a helper's TLS only from a certificate good for serverAuth
that carries the DNS name cluster.names.agent_server_name(agent) of the
agent the grant names (or a pool certificate's wildcard). Agent certificates
issued before helpers served TLS were clientAuth only and carried neither:
an agent serving with one would have every job refused, silently, so it
checks at start (agent/core.py) and cli/local.py issues such a one again.
"""
from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cluster.names import AGENT_DNS_SUFFIX, ANY_AGENT_SERVER_NAME, agent_server_name


def helper_cert_problem(cert_pem: bytes, name: str | None = None) -> str | None:
    """Why initiators would refuse this certificate on agent `name`'s Helper service, in one
    sentence, or None when it serves. name None: any agent's server name will do."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        return f"its certificate cannot be read ({exc})"
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None   # no restriction: good for any use
    if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        return "its certificate is not good for serverAuth (it was issued before agents served compile jobs)"
    try:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if name is None:
        good = any(n.endswith(AGENT_DNS_SUFFIX) for n in dns)
    else:
        good = agent_server_name(name) in dns or ANY_AGENT_SERVER_NAME in dns
    if not good:
        whose = f"agent {name!r}" if name else "an agent"
        return f"its certificate does not carry the server name of {whose} that initiators check"
    return None
