"""`baton agent`: command-line wiring for the agent daemon.

The CLI calls `add_arguments(parser)` and `config_from_args(args)`, then
`Agent(config).run()`; `python -m agent ...` and `main(argv)` do the same on
their own. Configuration errors end the program with one sentence (exit 2).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from agent.config import AgentConfig
from agent.core import Agent
from cluster import logs
from cluster.names import read_token
from lease.client import EtcdConfig
from lease.errors import BatonError

__all__ = ["Agent", "AgentConfig", "add_arguments", "config_from_args", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the agent's options to parser. --etcd, --cluster and the etcd TLS
    options are added only if the parser does not have them yet (the `baton`
    CLI adds them to every command)."""
    parser.add_argument("--name", default=None,
                        help="this agent's name, unique in the cluster (default: $BATON_AGENT_NAME, else "
                             "this host's name, so each container of `docker compose --scale agent=N` "
                             "has its own)")
    parser.add_argument("--cores", type=int, default=None, help="cores to offer (default: all)")
    parser.add_argument("--group", default="default", help="agent group (default: default)")
    parser.add_argument("--workdir", default=None,
                        help="where builds run, one directory per build (default ./baton-agent-NAME)")
    parser.add_argument("--agent-token-file", default=None,
                        help="file holding the cluster token (default: $BATON_AGENT_TOKEN)")
    parser.add_argument("--grpc-ca", default=None,
                        help="CA certificate for TLS to the coordinators (default: plaintext)")
    parser.add_argument("--tls-cert", default=None,
                        help="this agent's client certificate (baton certs agent); coordinators with TLS "
                             "require it and accept only the name it carries")
    parser.add_argument("--tls-key", default=None, help="the private key of --tls-cert")
    parser.add_argument("--lease-ttl", type=int, default=10, help="presence lease TTL in seconds (default 10)")
    parser.add_argument("--helper-listen", default="0.0.0.0:0", metavar="HOST:PORT",
                        help="where to serve compile jobs of `baton run` builds (default: a free port, "
                             "advertised with this host's name); 'none' serves none")
    parser.add_argument("--task-timeout", type=float, default=3600.0,
                        help="timeout for tasks that set none, in seconds (default 3600)")
    logs.add_log_format(parser)
    parser.add_argument("--task-user", default=None,
                        help="user that tasks run as when the agent runs as root (default: nobody); "
                             "an agent that is not root runs tasks as itself")
    known = parser._option_string_actions  # argparse has no public "has option"
    if "--etcd" not in known:
        parser.add_argument("--etcd", default=None,
                            help="etcd URL[,URL...] (default: $BATON_ETCD, else http://127.0.0.1:2379)")
    if "--cluster" not in known:
        parser.add_argument("--cluster", default=os.environ.get("BATON_CLUSTER", "default"))
    if "--etcd-ca" not in known:
        parser.add_argument("--etcd-ca", default=None, help="CA certificate for https etcd endpoints")
    if "--etcd-cert" not in known:
        parser.add_argument("--etcd-cert", default=os.environ.get("BATON_ETCD_CERT"),
                            help="client certificate for etcd")
    if "--etcd-key" not in known:
        parser.add_argument("--etcd-key", default=os.environ.get("BATON_ETCD_KEY"), help="client key for etcd")


def config_from_args(args: argparse.Namespace, etcd: EtcdConfig | None = None) -> AgentConfig:
    """Build the validated config; raises ConfigError with one sentence.
    `etcd` lets a caller pass an EtcdConfig it built from its own options."""
    if etcd is None:
        etcd = EtcdConfig.from_urls(getattr(args, "etcd", None), ca_cert=getattr(args, "etcd_ca", None),
                                    cert=getattr(args, "etcd_cert", None), key=getattr(args, "etcd_key", None))
    kw = {}
    if args.cores is not None:
        kw["cores"] = args.cores
    return AgentConfig(name=agent_name(args.name), group=args.group, workdir=args.workdir, etcd=etcd,
                       cluster=getattr(args, "cluster", None) or "default",
                       agent_token=read_token(args.agent_token_file), grpc_ca=args.grpc_ca,
                       tls_cert=args.tls_cert, tls_key=args.tls_key,
                       lease_ttl=args.lease_ttl, task_timeout=args.task_timeout, task_user=args.task_user,
                       helper_listen=None if args.helper_listen == "none" else args.helper_listen, **kw)


def agent_name(given: str | None) -> str:
    """--name, else $BATON_AGENT_NAME, else the host name's first label (a
    container's host name is its own: compose replicas get distinct names)."""
    return given or os.environ.get("BATON_AGENT_NAME") or socket.gethostname().split(".")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baton agent", description="Run a Baton build agent.")
    add_arguments(parser)
    parser.add_argument("--log-level", default=os.environ.get("BATON_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logs.configure(args.log_level.upper(), args.log_format, daemon=args.name)
    try:
        config = config_from_args(args)
        agent = Agent(config)
    except BatonError as exc:
        print(f"baton agent: {exc}", file=sys.stderr)
        return 2
    user = config.resolved_task_user()
    logging.getLogger("agent").info("agent %s starting: %d cores, work directory %s, tasks run as %s, etcd %s, "
                                    "cluster %s", config.name, config.cores, config.workdir,
                                    user.name if user else "the agent's user",
                                    ",".join(config.etcd.endpoints), config.cluster)
    try:
        agent.run()
    except BatonError as exc:
        print(f"baton agent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
