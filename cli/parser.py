"""The `baton` argument parser: every command, its options and their help.

The options every command takes are added to every level of the parser with
SUPPRESS as their default, so that `baton --etcd X build submit F`, `baton
build --etcd X submit F` and `baton build submit F --etcd X` are the same;
`fill_defaults` fills in the real defaults once, after parsing.
"""
from __future__ import annotations

import argparse
import os

# Options every command takes. They are added to every level of the parser
# (`baton --etcd X build submit F`, `baton build --etcd X submit F` and
# `baton build submit F --etcd X` are the same) with SUPPRESS as the default,
# so that a lower level never overwrites what was given at a higher one;
# the real defaults are filled in once, after parsing (`fill_defaults`).
COMMON = (
    (("--etcd",), dict(metavar="URL[,URL...]", env="BATON_ETCD", default="http://127.0.0.1:2379",
                       help="etcd endpoints")),
    (("--cluster",), dict(metavar="NAME", env="BATON_CLUSTER", default="default", help="cluster name")),
    (("--etcd-ca",), dict(metavar="FILE", env="BATON_ETCD_CA", default=None, help="CA certificate for https etcd")),
    (("--etcd-cert",), dict(metavar="FILE", env="BATON_ETCD_CERT", default=None,
                            help="client certificate for etcd")),
    (("--etcd-key",), dict(metavar="FILE", env="BATON_ETCD_KEY", default=None, help="client key for etcd")),
    (("--etcd-timeout",), dict(metavar="S", type=float, default=2.0, help="seconds per etcd call")),
    (("-v", "--verbose"), dict(action="store_true", default=False, help="log debug details")),
    (("--context",), dict(metavar="DIR", env="BATON_CONTEXT", default=".baton",
                          help="directory of a `baton up` cluster: its context.json gives the etcd "
                               "endpoints, CAs, cluster and admin credentials not given otherwise "
                               "(flags win, then environment variables, then the context)")),
)
API = (
    (("--url",), dict(metavar="URL", default=None,
                      help="a coordinator's web address (default: the leader's, found in etcd)")),
    (("--ca",), dict(metavar="FILE", env="BATON_CA", default=None, help="CA that signed the UI's certificate")),
)


def _help_of(spec: dict) -> str:
    default = spec["default"]
    where = f"${spec['env']}, else {default}" if spec.get("env") and default else (
        f"${spec['env']}" if spec.get("env") else default)
    return spec["help"] if where in (None, False) else f"{spec['help']} (default: {where})"


def _add(p: argparse.ArgumentParser, options) -> None:
    for flags, spec in options:
        kw = {k: v for k, v in spec.items() if k not in ("env", "default", "help")}
        p.add_argument(*flags, default=argparse.SUPPRESS, help=_help_of(spec), **kw)


# Commands that talk to a running cluster as its client: they read the context
# (cli.context). The daemons and `baton up` take their options as given.
CONTEXT_COMMANDS = ("status", "backup", "switchover", "build", "user", "run")


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Options not given: the environment variable, else the context, else the default.
    Raises ConfigError when a context that was asked for cannot be read."""
    from cli.context import RUN_OPTIONS, load_context

    # `baton up` starts its own etcd unless --etcd names one (not $BATON_ETCD).
    args.etcd_given = hasattr(args, "etcd")
    context = load_context(getattr(args, "context", None)) \
        if getattr(args, "command", None) in CONTEXT_COMMANDS else {}
    for flags, spec in COMMON + API:
        dest = flags[-1].lstrip("-").replace("-", "_")
        if hasattr(args, dest):
            continue
        env = spec.get("env")
        if env and os.environ.get(env):
            setattr(args, dest, os.environ[env])
        else:
            setattr(args, dest, context.get(dest, spec["default"]))
    # `baton run`'s own options (its flags, then their environment variables, else the context).
    for dest in RUN_OPTIONS:
        if getattr(args, dest, "") is None and dest in context:
            setattr(args, dest, context[dest])
    # Credentials: $BATON_USER/$BATON_PASSWORD, else the context's user and kept password.
    args.user = os.environ.get("BATON_USER") or context.get("user")
    args.password = os.environ.get("BATON_PASSWORD") or (
        context.get("password") if args.user == context.get("user") else None)
    return args


class _Help(argparse.HelpFormatter):
    """Shows an option's default when it has one worth saying and its help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Every (sub)command: the common options, defaults shown in --help."""

    def __init__(self, *a, api: bool = False, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*a, **kw)
        _add(self, COMMON)
        if api:
            _add(self, API)


class _Version(argparse.Action):
    """--version, looked up only when asked: the package metadata costs every command ~7 ms
    to read (`baton run` among them, once per build, before its COMMAND starts)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from cli import __version__

        print(f"baton {__version__}")   # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="baton", description="Baton: a build-farm coordinator with a hot backup.",
                     epilog="Where options come from: a flag, else its environment variable, else the "
                            "context (context.json in --context DIR, $BATON_CONTEXT or ./.baton, written by "
                            "`baton up`), else the default. Credentials: $BATON_USER/$BATON_PASSWORD, else "
                            "the context's admin.")
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("up", help="one local cluster on this machine (etcd, primary, backups, agents, UIs)")
    p.add_argument("--agents", type=int, default=2, help="agents to start")
    p.add_argument("--backups", type=int, default=1, help="backup coordinators to start (b1 is selected)")
    p.add_argument("--cores", type=int, default=2, help="cores per agent")
    p.add_argument("--ttl", type=int, default=10, help="lease ttl in seconds")
    p.add_argument("--dir", default=None,
                   help="where data, certificates, logs and context.json go (default: the --context directory)")
    p.add_argument("--no-tls", action="store_true", help="plain HTTP and gRPC (TLS is on by default)")
    p.add_argument("--base-port", type=int, default=0,
                   help="first of the 100 ports to use (0: any free ports)")

    p = sub.add_parser("demo", help="run a build, kill the primary mid-build, watch the failover and handback")
    p.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--agents", type=int, default=3, help="agents to start")

    p = sub.add_parser("etcd", help="a single-member etcd for local use")
    p.add_argument("--data-dir", default=".baton/etcd", help="etcd's data directory")
    p.add_argument("--port", type=int, default=2379, help="client port (the peer port is the next one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")

    p = sub.add_parser("coordinator", help="a coordinator (daemon + UI)")
    p.add_argument("--name", required=True, help="this coordinator's name (unique in the cluster)")
    p.add_argument("--role", choices=("primary", "backup"), required=True, help="primary, or a backup of --primary")
    p.add_argument("--primary", help="the primary's name (backups only)")
    p.add_argument("--initial-backup", default=os.environ.get("BATON_INITIAL_BACKUP") or None,
                   help="primary only: the backup selected the first time this primary leads a cluster "
                        "that has no settings yet; never overrides a later choice (default: "
                        "$BATON_INITIAL_BACKUP, else none)")
    p.add_argument("--grpc", default="0.0.0.0:7000", help="HOST:PORT agents connect to")
    p.add_argument("--web", default="0.0.0.0:8000", help="HOST:PORT of the web UI")
    p.add_argument("--advertise", help="host name to publish for agents and links (default: this host's name)")
    p.add_argument("--ttl", type=int, default=10, help="lease ttl in seconds")
    p.add_argument("--renew-deadline", type=float, default=None,
                   help="seconds without a lease renewal after which a leader stops acting (default: 2/3 ttl)")
    p.add_argument("--keepalive-interval", type=float, default=None,
                   help="seconds between lease renewals (default: ttl/3)")
    p.add_argument("--failback-delay", type=float, default=5.0,
                   help="seconds the primary must be ready before a backup hands back")
    p.add_argument("--grace", type=float, default=None,
                   help="seconds agents have to return after a leader change (default: ttl)")
    p.add_argument("--tls-cert", help="certificate for gRPC and HTTPS, naming this host (default: plaintext)")
    p.add_argument("--tls-key", help="the private key of --tls-cert")
    p.add_argument("--tls-ca", help="CA certificate of the cluster (checked to exist)")
    p.add_argument("--agent-token-file", help="file holding the cluster token (default: $BATON_AGENT_TOKEN)")
    p.add_argument("--state-dir", default=None,
                   help="where the daemon keeps its state file (default: $BATON_STATE_DIR/state, else .baton/state)")
    p.add_argument("--no-web", action="store_true", help="do not start the web UI")
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    from cluster.logs import add_log_format

    add_log_format(p)

    p = sub.add_parser("agent", help="an agent (build machine)")
    from agent.options import add_arguments

    add_arguments(p)  # the agent's own options, --log-format too (--etcd and the other common ones are there already)

    p = sub.add_parser("status", help="who leads, epoch, roles, selected backup, agents", api=True)
    p.add_argument("--json", action="store_true", help="print the API's JSON document")

    p = sub.add_parser("backup", help="select the backup coordinator", api=True)
    bsub = p.add_subparsers(dest="backup_command", metavar="ACTION", parser_class=_Parser)
    sel = bsub.add_parser("select", help="select NAME, or none", api=True)
    sel.add_argument("name", help="a registered backup's name, or none")

    p = sub.add_parser("switchover", help="planned handover to the selected backup (and back)", api=True)
    p.add_argument("--to", help="coordinator to hand over to (default: the other side)")

    p = sub.add_parser("build", help="submit, list, show and cancel builds", api=True)
    bsub = p.add_subparsers(dest="build_command", metavar="ACTION", parser_class=_Parser)
    s = bsub.add_parser("submit", help="submit a build file (YAML or JSON)", api=True)
    s.add_argument("file", help="the build file")
    s.add_argument("--wait", action="store_true", help="wait until the build ends; exit 1 if it failed")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")
    s = bsub.add_parser("show", help="show a build", api=True)
    s.add_argument("id", help="the build's id")
    s.add_argument("--json", action="store_true", help="print the API's JSON document")
    s = bsub.add_parser("list", help="list builds, newest first (id, name, state, done/total, submitted)", api=True)
    s.add_argument("--json", action="store_true", help="print the API's JSON document")
    s = bsub.add_parser("cancel", help="cancel a build: its queued tasks never start, running ones are stopped",
                        api=True)
    s.add_argument("id", help="the build's id")

    p = sub.add_parser("user", help="manage users", api=True)
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", parser_class=_Parser)
    u = usub.add_parser("add", help="add a user (password from a prompt or stdin)", api=True)
    u.add_argument("name", help="the user's name")
    u.add_argument("--role", choices=("admin", "viewer"), required=True, help="admin (may change) or viewer")
    u = usub.add_parser("passwd", help="set a user's password (from a prompt or stdin); "
                                       "an admin for anyone, a viewer for themself", api=True)
    u.add_argument("name", help="the user's name")
    u = usub.add_parser("delete", help="delete a user (not the last admin)", api=True)
    u.add_argument("name", help="the user's name")
    u = usub.add_parser("list", help="list users and their roles", api=True)
    u.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("run", help="run a build command (make, ninja, cmake --build) with its compiles on the farm")
    p.add_argument("--max-remote", type=int, default=None, help="at most this many jobs remote at once")
    p.add_argument("--local-only", action="store_true", help="compile everything here")
    p.add_argument("--json", action="store_true", help="print the build id and counts as JSON")
    p.add_argument("--remote-wait", type=float, default=None, metavar="S",
                   help="seconds a compile waits for a free helper core before it compiles here "
                        "(default: the cluster's lease ttl, read from the leader's lease; else 10)")
    p.add_argument("--agent-token-file", default=None,
                   help="file holding the cluster token (default: $BATON_AGENT_TOKEN)")
    p.add_argument("--grpc-ca", default=os.environ.get("BATON_GRPC_CA"),
                   help="CA certificate of the coordinators' gRPC TLS (default: $BATON_GRPC_CA; none: plaintext)")
    p.add_argument("--tls-cert", default=os.environ.get("BATON_TLS_CERT"),
                   help="client certificate for TLS coordinators, signed by the cluster CA, e.g. an agent's "
                        "(default: $BATON_TLS_CERT)")
    p.add_argument("--tls-key", default=os.environ.get("BATON_TLS_KEY"),
                   help="the private key of --tls-cert (default: $BATON_TLS_KEY)")
    p.add_argument("build_command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="the build command")

    sub.add_parser("cc", help="one compile of a build (COMPILER ARGS...; put first on PATH by baton run)",
                   add_help=False)

    p = sub.add_parser("certs", help="issue TLS certificates (a local CA)")
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION", parser_class=_Parser)
    c = csub.add_parser("ca", help="create a CA in DIR")
    c.add_argument("--dir", required=True, help="where ca.pem and ca-key.pem go")
    c = csub.add_parser("issue", help="issue a certificate naming HOST(s), signed by the CA in DIR")
    c.add_argument("--dir", required=True, help="the CA's directory; the certificate goes there too")
    c.add_argument("--name", action="append", required=True, help="host name (repeatable)")
    c.add_argument("--ip", action="append", default=[], help="IP address to include (repeatable)")
    c.add_argument("--out", help="base name of the files (default: the first --name)")
    c = csub.add_parser("agent", help="issue agent NAME's client certificate (agent-NAME.pem), signed by the CA in DIR")
    c.add_argument("--dir", required=True, help="the CA's directory; the certificate goes there too")
    c.add_argument("--name", required=True, help="the agent's name (what it says in its Hello)")
    c.add_argument("--any-name", action="store_true",
                   help="a pool certificate: it may say Hello under any agent name (scaled replicas); "
                        "a live agent's name is still never taken over")
    return parser
