"""`baton`: the command line (docs/design.md section 5).

Every command takes --etcd URL[,URL...] (default BATON_ETCD, else
http://127.0.0.1:2379) and --cluster NAME, before or after its verb. Errors
end in one sentence on stderr and an exit code that tells their cause
(0 ok, 1 failed, 2 usage or input, 3 authentication or permission, 4 the
cluster cannot be reached), never a traceback.
"""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time

from lease.errors import BatonError, ConfigError

# Exit codes (docs/design.md section 5).
OK, FAILED, USAGE_ERROR, AUTH_ERROR, UNREACHABLE = 0, 1, 2, 3, 4

# Options every command takes. They are added to every level of the parser
# (`baton --etcd X build submit F`, `baton build --etcd X submit F` and
# `baton build submit F --etcd X` are the same) with SUPPRESS as the default,
# so that a lower level never overwrites what was given at a higher one;
# the real defaults are filled in once, after parsing (`_fill_defaults`).
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
)
API = (
    (("--url",), dict(metavar="URL", default=None,
                      help="a coordinator's web address (default: the leader's, found in etcd)")),
    (("--ca",), dict(metavar="FILE", env="BATON_CA", default=None, help="CA that signed the UI's certificate")),
)


def _default_of(spec: dict):
    env = spec.get("env")
    return os.environ.get(env) or spec["default"] if env else spec["default"]


def _help_of(spec: dict) -> str:
    default = spec["default"]
    where = f"${spec['env']}, else {default}" if spec.get("env") and default else (
        f"${spec['env']}" if spec.get("env") else default)
    return spec["help"] if where in (None, False) else f"{spec['help']} (default: {where})"


def _add(p: argparse.ArgumentParser, options) -> None:
    for flags, spec in options:
        kw = {k: v for k, v in spec.items() if k not in ("env", "default", "help")}
        p.add_argument(*flags, default=argparse.SUPPRESS, help=_help_of(spec), **kw)


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    # `baton up` starts its own etcd unless --etcd names one (not $BATON_ETCD).
    args.etcd_given = hasattr(args, "etcd")
    for flags, spec in COMMON + API:
        dest = flags[-1].lstrip("-").replace("-", "_")
        if not hasattr(args, dest):
            setattr(args, dest, _default_of(spec))
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


def build_parser() -> argparse.ArgumentParser:
    from cli import __version__

    parser = _Parser(prog="baton", description="Baton: a build-farm coordinator with a hot backup.")
    parser.add_argument("--version", action="version", version=f"baton {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("up", help="one local cluster on this machine (etcd, primary, backups, agents, UIs)")
    p.add_argument("--agents", type=int, default=2, help="agents to start")
    p.add_argument("--backups", type=int, default=1, help="backup coordinators to start (b1 is selected)")
    p.add_argument("--cores", type=int, default=2, help="cores per agent")
    p.add_argument("--ttl", type=int, default=10, help="lease ttl in seconds")
    p.add_argument("--dir", default=".baton", help="where data, certificates and logs go")
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

    p = sub.add_parser("agent", help="an agent (build machine)")
    from agent.daemon import add_arguments

    add_arguments(p)  # the agent's own options (--etcd and the other common ones are there already)

    p = sub.add_parser("status", help="who leads, epoch, roles, selected backup, agents", api=True)
    p.add_argument("--json", action="store_true", help="print the API's JSON document")

    p = sub.add_parser("backup", help="select the backup coordinator", api=True)
    bsub = p.add_subparsers(dest="backup_command", metavar="ACTION", parser_class=_Parser)
    sel = bsub.add_parser("select", help="select NAME, or none", api=True)
    sel.add_argument("name", help="a registered backup's name, or none")

    p = sub.add_parser("switchover", help="planned handover to the selected backup (and back)", api=True)
    p.add_argument("--to", help="coordinator to hand over to (default: the other side)")

    p = sub.add_parser("build", help="submit and show builds", api=True)
    bsub = p.add_subparsers(dest="build_command", metavar="ACTION", parser_class=_Parser)
    s = bsub.add_parser("submit", help="submit a build file (YAML or JSON)", api=True)
    s.add_argument("file", help="the build file")
    s.add_argument("--wait", action="store_true", help="wait until the build ends; exit 1 if it failed")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")
    s = bsub.add_parser("show", help="show a build", api=True)
    s.add_argument("id", help="the build's id")
    s.add_argument("--json", action="store_true", help="print the API's JSON document")

    p = sub.add_parser("user", help="manage users", api=True)
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", parser_class=_Parser)
    u = usub.add_parser("add", help="add a user (password from a prompt or stdin)", api=True)
    u.add_argument("name", help="the user's name")
    u.add_argument("--role", choices=("admin", "viewer"), required=True, help="admin (may change) or viewer")

    p = sub.add_parser("certs", help="issue TLS certificates (a local CA)")
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION", parser_class=_Parser)
    c = csub.add_parser("ca", help="create a CA in DIR")
    c.add_argument("--dir", required=True, help="where ca.pem and ca-key.pem go")
    c = csub.add_parser("issue", help="issue a certificate naming HOST(s), signed by the CA in DIR")
    c.add_argument("--dir", required=True, help="the CA's directory; the certificate goes there too")
    c.add_argument("--name", action="append", required=True, help="host name (repeatable)")
    c.add_argument("--ip", action="append", default=[], help="IP address to include (repeatable)")
    c.add_argument("--out", help="base name of the files (default: the first --name)")
    return parser


def etcd_config(args):
    from lease.client import EtcdConfig

    return EtcdConfig.from_urls(args.etcd, timeout=args.etcd_timeout, ca_cert=args.etcd_ca,
                                cert=args.etcd_cert, key=args.etcd_key)


def cmd_coordinator(args) -> int:
    from cluster.names import read_token
    from coordinator.config import CoordinatorConfig, Timings
    from coordinator.daemon import run_coordinator

    timings = Timings(ttl=args.ttl, renew_deadline=args.renew_deadline,
                      keepalive_interval=args.keepalive_interval, failback_delay=args.failback_delay,
                      grace=args.grace)
    config = CoordinatorConfig(
        name=args.name, role=args.role, primary=args.primary, grpc=args.grpc, web=args.web,
        cluster=args.cluster, etcd=etcd_config(args), timings=timings,
        agent_token=read_token(args.agent_token_file), tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_ca=args.tls_ca, advertise_host=args.advertise)
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file {path!r} does not exist")
    if os.environ.get("BATON_ADMIN_PASSWORD"):
        from cluster.users import UserError, validate_password

        try:
            validate_password(os.environ["BATON_ADMIN_PASSWORD"])
        except UserError as exc:
            raise ConfigError(f"BATON_ADMIN_PASSWORD: {exc}") from None
    state_dir = args.state_dir or os.path.join(os.environ.get("BATON_STATE_DIR", ".baton"), "state")
    start_ui = None
    if not args.no_web:
        from web.serve import start_gunicorn as start_ui
    return run_coordinator(config, state_dir, start_ui=start_ui, test_hooks=args.test_hooks)


def cmd_agent(args) -> int:
    from agent.daemon import Agent, config_from_args

    Agent(config_from_args(args)).run()
    return 0


def cmd_etcd(args) -> int:
    from cli.local import find_etcd

    binary = find_etcd()
    os.makedirs(args.data_dir, exist_ok=True)
    url = f"http://{args.host}:{args.port}"
    argv = [binary, "--name", "baton", "--data-dir", args.data_dir, "--listen-client-urls", url,
            "--advertise-client-urls", url, "--listen-peer-urls", f"http://{args.host}:{args.port + 1}",
            "--initial-advertise-peer-urls", f"http://{args.host}:{args.port + 1}",
            "--initial-cluster", f"baton=http://{args.host}:{args.port + 1}", "--log-level", "warn"]
    os.execv(binary, argv)
    return 0  # not reached


def _client(args, prefer_leader: bool = True):
    from cli.api_client import ApiClient, find_web_url
    from cluster.keys import Keys
    from lease.client import connect

    url = args.url
    if not url:
        etcd = connect(etcd_config(args))
        try:
            url = find_web_url(etcd, Keys(args.cluster), prefer_leader=prefer_leader)
        finally:
            etcd.close()
    return ApiClient(url, ca=args.ca)


def cmd_status(args) -> int:
    status = _client(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    leader = status.get("leader")
    print(f"leader:          {leader['name']} (epoch {leader['epoch']})" if leader else "leader:          none")
    print(f"selected backup: {status.get('selected_backup') or 'none'}")
    print("coordinators:")
    for c in status.get("coordinators", []):
        print(f"  {c['name']:<16} {c.get('role', '?'):<8} {'alive' if c.get('alive') else 'down'}")
    print("agents:")
    for a in status.get("agents", []):
        print(f"  {a['name']:<16} {a.get('state', '?'):<12} cores {a.get('cores', '?'):<4} "
              f"-> {a.get('coordinator') or '-'}")
    b = status.get("builds", {})
    print(f"builds:          {b.get('queued', 0)} queued, {b.get('running', 0)} running, "
          f"{b.get('done', 0)} done, {b.get('failed', 0)} failed")
    events = status.get("events") or []
    if events:
        print("recent events:")
        for e in events[:10]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time", 0)))
            print(f"  {when} {e.get('type', '?'):<12} epoch {e.get('epoch')}: {e.get('detail', '')}")
    return 0


def cmd_backup(args) -> int:
    if args.backup_command != "select":
        raise ConfigError("usage: baton backup select NAME|none")
    name = None if args.name.lower() == "none" else args.name
    _client(args).select_backup(name)
    print(f"selected backup: {name or 'none'}")
    return 0


def cmd_switchover(args) -> int:
    result = _client(args).switchover(args.to)
    print(f"switchover requested: {result.get('target', args.to)} will lead")
    return 0


def cmd_build(args) -> int:
    if args.build_command == "submit":
        from cluster.buildfile import MAX_BUILD_BYTES

        try:
            with open(args.file, "rb") as f:
                text = f.read(MAX_BUILD_BYTES + 1)  # no more: the server refuses it anyway
        except OSError as exc:
            raise ConfigError(f"cannot read build file {args.file!r}: {exc.strerror}") from None
        if len(text) > MAX_BUILD_BYTES:
            raise ConfigError(f"build file {args.file!r} is too large: the limit is {MAX_BUILD_BYTES} bytes (1 MiB)")
        client = _client(args)
        build_id = client.submit_build(text, args.file)["id"]
        if not args.wait:
            print(json.dumps({"id": build_id}) if args.json else build_id)
            return 0
        deadline = time.monotonic() + args.timeout
        build = client.build(build_id)
        while build["state"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise ConfigError(f"build {build_id} did not end within {args.timeout:g} s")
            time.sleep(0.5)
            client = _client(args)  # the leader may have changed while we waited
            build = client.build(build_id)
        print(json.dumps(build, indent=2) if args.json else f"{build_id} {build['state']}")
        return 0 if build["state"] == "done" else 1
    if args.build_command == "show":
        build = _client(args, prefer_leader=True).build(args.id)
        if args.json:
            print(json.dumps(build, indent=2))
            return 0
        print(f"{build['id']} {build.get('name', '')}: {build['state']}")
        for t in build.get("tasks", []):
            print(f"  {t['id']:<24} {t['state']:<8} attempt {t.get('attempt', 0)} "
                  f"agent {t.get('agent') or '-'} exit {t.get('exit_code') if t.get('exit_code') is not None else '-'}")
        return 0
    raise ConfigError("usage: baton build submit FILE | baton build show ID")


def cmd_user(args) -> int:
    if args.user_command != "add":
        raise ConfigError("usage: baton user add NAME --role admin|viewer")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the passwords do not match")
    else:
        password = sys.stdin.readline().rstrip("\n")
    _client(args).add_user(args.name, args.role, password)
    print(f"user {args.name} ({args.role}) added")
    return 0


def cmd_certs(args) -> int:
    from cli import certs

    if args.certs_command == "ca":
        certs.make_ca(args.dir)
        print(os.path.join(args.dir, "ca.pem"))
        return 0
    if args.certs_command == "issue":
        ca = certs.load_ca(args.dir)
        cert, key = certs.issue_cert(ca, args.dir, args.out or args.name[0], args.name, ips=args.ip)
        print(cert)
        print(key)
        return 0
    raise ConfigError("usage: baton certs ca --dir D | baton certs issue --dir D --name HOST")


def cmd_up(args) -> int:
    from cli.local import run_up

    return run_up(args)


def cmd_demo(args) -> int:
    from cli.demo import run_demo

    return run_demo(args)


COMMANDS = {"coordinator": cmd_coordinator, "agent": cmd_agent, "etcd": cmd_etcd, "status": cmd_status,
            "backup": cmd_backup, "switchover": cmd_switchover, "build": cmd_build, "user": cmd_user,
            "certs": cmd_certs, "up": cmd_up, "demo": cmd_demo}


def exit_code_for(exc: BaseException) -> int:
    """The exit code that tells a script what went wrong (docs/design.md section 5)."""
    from cli.api_client import ApiError
    from lease.errors import EtcdAuthError, EtcdUnavailable

    if isinstance(exc, ApiError):
        if exc.status in (401, 403):
            return AUTH_ERROR
        if exc.status in (0, 502, 503, 504):
            return UNREACHABLE
        if exc.status in (400, 413, 415, 422):
            return USAGE_ERROR
        return FAILED
    if isinstance(exc, EtcdAuthError):
        return AUTH_ERROR
    if isinstance(exc, EtcdUnavailable):
        return UNREACHABLE
    if isinstance(exc, (ConfigError, ValueError)):
        return USAGE_ERROR
    return FAILED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _fill_defaults(parser.parse_args(argv))
    if not args.command:
        parser.print_help()
        return OK
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cli.api_client import ApiError

    try:
        return COMMANDS[args.command](args) or OK
    except (BatonError, ApiError) as exc:
        print(f"baton {args.command}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a user sees one sentence; -v shows where it came from
        logging.getLogger("baton").debug("unexpected error", exc_info=True)
        print(f"baton {args.command}: unexpected error: {type(exc).__name__}: {exc}"
              + ("" if args.verbose else " (run with -v for details)"), file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
