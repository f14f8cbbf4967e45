"""etcd identities and roles for a deployment `baton up` does not start:
docker-compose.yml's one-shot `certs` and `etcd-setup` services and the
systemd unit baton-etcd-setup.service run this (docs/etcd-auth.md).

    python -m cli.etcd_setup certs --ca-dir DIR [--renew] IDENTITY=DIR ...
    python -m cli.etcd_setup roles --coordinators p1,b1 [--agents a1,a2] [--agent-pool]

`certs` needs the CA's key and no etcd: for each IDENTITY (`root`, `cli`,
`coordinator:NAME`, `agent:NAME`, `agent-pool`) it writes DIR/etcd.pem and
DIR/etcd-key.pem, a client certificate whose common name is that etcd user
(cluster.etcd_roles), one directory per identity so that each process can be
given its own and nothing else. A certificate that the CA signed for the
same user is kept (`--renew` issues it again).

`roles` runs as etcd's `root` (BATON_ETCD, BATON_ETCD_CA, BATON_ETCD_CERT,
BATON_ETCD_KEY: root's certificate from `certs`): it makes etcd hold the
cluster's roles and users (lease.auth.apply) and turns auth on. Both are
idempotent: run on every `docker compose up`, a second run changes nothing,
and after a restore from a snapshot (which holds the users and roles) it
finds everything in place.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cli import certs
from cluster import etcd_roles
from lease import auth
from lease.client import EtcdConfig, connect
from lease.errors import ConfigError, EtcdUnavailable

CERT_FILE, KEY_FILE = "etcd.pem", "etcd-key.pem"


def user_of(cluster: str, identity: str) -> str:
    """The etcd user an identity is: root, cli, coordinator:NAME, agent:NAME or agent-pool."""
    kind, _, name = identity.partition(":")
    if identity == "root":
        return auth.ROOT
    if identity == "cli":
        return etcd_roles.status_user(cluster)
    if identity == etcd_roles.AGENT_POOL:
        return etcd_roles.agent_pool_user(cluster)
    if kind == "coordinator" and name:
        return etcd_roles.coordinator_user(cluster, name)
    if kind == "agent" and name:
        return etcd_roles.agent_user(cluster, name)
    raise ConfigError(f"etcd identity {identity!r} is not root, cli, coordinator:NAME, agent:NAME "
                      f"or {etcd_roles.AGENT_POOL}")


def _current(cert_path: Path, ca: certs.CA, user: str) -> bool:
    """Whether cert_path is a certificate of this CA naming this user."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(names) and names[0].value == user and (cert_path.parent / KEY_FILE).exists()


def issue(ca_dir: str | os.PathLike, cluster: str, specs: list[str], renew: bool = False) -> list[str]:
    """Write each IDENTITY=DIR's certificate unless a current one is there; the identities issued."""
    ca = certs.load_ca(ca_dir)
    issued = []
    for spec in specs:
        identity, sep, directory = spec.partition("=")
        if not sep or not directory:
            raise ConfigError(f"{spec!r} is not IDENTITY=DIRECTORY")
        user = user_of(cluster, identity)
        if renew or not _current(Path(directory) / CERT_FILE, ca, user):
            certs.issue_client_cert(ca, directory, CERT_FILE[:-len(".pem")], user)
            issued.append(identity)
    return issued


def apply_roles(config: EtcdConfig, cluster: str, coordinators: list[str], agents: list[str],
                agent_pool: bool, wait: float = 60.0) -> None:
    """The cluster's roles and users in etcd, auth on. etcd may still be electing a
    leader when this starts (compose starts it once the members answer health
    checks): unavailable answers are retried until `wait` seconds have passed."""
    access = etcd_roles.cluster_access(cluster, coordinators, agents, agent_pool)
    deadline = time.monotonic() + wait
    while True:
        try:
            etcd = connect(config)
            try:
                auth.apply(etcd, *access)  # idempotent: a run cut short is finished by the next
            finally:
                etcd.close()
            return
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _names(text: str) -> list[str]:
    return [n for n in (p.strip() for p in text.split(",")) if n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.etcd_setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", default=os.environ.get("BATON_CLUSTER") or "default",
                        help="cluster name (default: $BATON_CLUSTER, else default)")
    sub = parser.add_subparsers(dest="action", required=True)
    c = sub.add_parser("certs", help="issue etcd client certificates, one directory per identity")
    c.add_argument("--ca-dir", required=True, help="directory of the CA (ca.pem, ca-key.pem)")
    c.add_argument("--renew", action="store_true", help="issue every certificate again")
    c.add_argument("identities", nargs="+", metavar="IDENTITY=DIR",
                   help="root, cli, coordinator:NAME, agent:NAME or agent-pool, and its directory")
    r = sub.add_parser("roles", help="set up etcd's roles and users and turn auth on (as root)")
    r.add_argument("--etcd", default=None, help="etcd endpoints (default: $BATON_ETCD)")
    r.add_argument("--etcd-ca", default=os.environ.get("BATON_ETCD_CA"), help="default: $BATON_ETCD_CA")
    r.add_argument("--etcd-cert", default=os.environ.get("BATON_ETCD_CERT"),
                   help="root's client certificate (default: $BATON_ETCD_CERT)")
    r.add_argument("--etcd-key", default=os.environ.get("BATON_ETCD_KEY"), help="default: $BATON_ETCD_KEY")
    r.add_argument("--coordinators", type=_names, default=[], help="coordinator names, comma-separated")
    r.add_argument("--agents", type=_names, default=[], help="agent names with their own identity")
    r.add_argument("--agent-pool", action="store_true", help="also the scaled agent service's shared user")
    r.add_argument("--wait", type=float, default=60.0, help="seconds to wait for etcd (default: 60)")
    args = parser.parse_args(argv)
    try:
        if args.action == "certs":
            done = issue(args.ca_dir, args.cluster, args.identities, args.renew)
            print(f"etcd identities: issued {', '.join(done) if done else 'none (all current)'}")
        else:
            config = EtcdConfig.from_urls(args.etcd, ca_cert=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key)
            apply_roles(config, args.cluster, args.coordinators, args.agents, args.agent_pool, args.wait)
            print(f"etcd roles of cluster {args.cluster!r} in place; auth on")
    except Exception as exc:  # noqa: BLE001 - a one-shot service: one sentence, non-zero exit
        print(f"etcd set-up failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
