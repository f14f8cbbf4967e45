"""`baton agent`: command-line wiring for the agent daemon.

The CLI calls `add_arguments(parser)` (agent/options.py) and `config_from_args(args)`, then
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
from agent.options import add_arguments
from cluster import logs
from cluster.names import read_token
from lease.client import EtcdConfig
from lease.errors import BatonError

__all__ = ["Agent", "AgentConfig", "add_arguments", "config_from_args", "main"]


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
