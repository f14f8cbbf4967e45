"""The agent's command-line options, apart from the daemon's wiring (agent/daemon.py).

Every `baton` command builds the whole parser, `baton run` among them, once per
build: importing agent.daemon for these (it imports the agent itself: its
runner, helper service and compile jobs) cost each ~16 ms before its COMMAND
started (bench/README.md, issue 14). This module imports only argparse, os
and cluster.logs.
"""
from __future__ import annotations

import argparse
import os

from cluster import logs


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
