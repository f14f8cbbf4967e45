"""`baton`: the command line (docs/design.md section 5).

Every command takes --etcd URL[,URL...] (default BATON_ETCD, else
http://127.0.0.1:2379) and --cluster NAME, before or after its verb. Errors
end in one sentence on stderr and an exit code that tells their cause
(0 ok, 1 failed, 2 usage or input, 3 authentication or permission, 4 the
cluster cannot be reached), never a traceback.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import sys
import time

from cli.parser import build_parser, fill_defaults
from lease.errors import BatonError, ConfigError

# Exit codes (docs/design.md section 5).
OK, FAILED, USAGE_ERROR, AUTH_ERROR, UNREACHABLE = 0, 1, 2, 3, 4

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
        tls_ca=args.tls_ca, advertise_host=args.advertise, initial_backup=args.initial_backup)
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file {path!r} does not exist")
    from cluster.users import UserError, admin_password_from_env, validate_password

    admin_password = admin_password_from_env()  # BATON_ADMIN_PASSWORD_FILE or BATON_ADMIN_PASSWORD
    if admin_password is not None:
        try:
            validate_password(admin_password)
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
    from cli.processes import find_etcd

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
    from cli.api_client import find_web_url
    from cluster.keys import Keys
    from lease.client import connect

    url = args.url
    if not url:
        etcd = connect(etcd_config(args))
        try:
            url = find_web_url(etcd, Keys(args.cluster), prefer_leader=prefer_leader)
        finally:
            etcd.close()
    return _api(args, url)


def _api(args, url: str):
    from cli.api_client import ApiClient

    return ApiClient(url, user=args.user, password=args.password, ca=args.ca)


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
          f"{b.get('done', 0)} done, {b.get('failed', 0)} failed, {b.get('cancelled', 0)} cancelled")
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


def _follow(args, build_id: str) -> dict:
    """Wait for the build's end, following the leader through failovers (cli.wait)."""
    from cli.wait import EtcdDirectory, follow_build
    from cluster.keys import Keys
    from lease.client import connect

    def client_for(url: str):
        return _api(args, url)

    if args.url:  # one coordinator named: read from it alone
        return follow_build(build_id, lambda: [args.url], client_for, args.timeout)
    directory = EtcdDirectory(lambda: connect(etcd_config(args)), Keys(args.cluster))
    try:
        return follow_build(build_id, directory, client_for, args.timeout)
    finally:
        directory.close()


def cmd_build(args) -> int:
    if args.build_command in BUILD_VERBS:
        return BUILD_VERBS[args.build_command](args)
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
        build = _follow(args, build_id)
        print(json.dumps(build, indent=2) if args.json else f"{build_id} {build['state']}")
        return 0 if build["state"] == "done" else 1
    if args.build_command == "show":
        build = _client(args, prefer_leader=True).build(args.id)
        if args.json:
            print(json.dumps(build, indent=2))
            return 0
        if build.get("kind") == "run":
            from cli.run_report import run_summary

            print(run_summary(build))
            return 0
        print(f"{build['id']} {build.get('name', '')}: {build['state']}")
        for t in build.get("tasks", []):
            print(f"  {t['id']:<24} {t['state']:<8} attempt {t.get('attempt', 0)} "
                  f"agent {t.get('agent') or '-'} exit {t.get('exit_code') if t.get('exit_code') is not None else '-'}")
        return 0
    raise ConfigError("usage: baton build submit FILE | list | show ID | cancel ID")


def cmd_build_list(args) -> int:
    """`baton build list`: a table of builds, newest first (the API's order)."""
    builds = _client(args).builds()
    if args.json:
        print(json.dumps(builds, indent=2))
        return OK
    # KIND: "tasks" (a build file) or "run" (`baton run`: DONE counts its jobs).
    rows = [(b["id"], b.get("name") or "", b["state"], f"{int(b.get('done') or 0)}/{int(b.get('total') or 0)}",
             b.get("kind") or "tasks",
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["submitted"])) if b.get("submitted") else "-")
            for b in builds]
    header = ("ID", "NAME", "STATE", "DONE", "KIND", "SUBMITTED")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return OK


def cmd_build_cancel(args) -> int:
    """`baton build cancel ID`: sent to the coordinator serving agents (the leader)."""
    answer = _client(args).cancel_build(args.id)
    print(f"{args.id}: cancel {answer.get('cancel', 'requested')}; its running tasks are being stopped")
    return OK


BUILD_VERBS = {"list": cmd_build_list, "cancel": cmd_build_cancel}


def _read_password(name: str) -> str:
    """A new password: typed twice at a prompt on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the passwords do not match")
        return password
    return sys.stdin.readline().rstrip("\n")


def cmd_user(args) -> int:
    if args.user_command == "add":
        _client(args).add_user(args.name, args.role, _read_password(args.name))
        print(f"user {args.name} ({args.role}) added")
    elif args.user_command == "passwd":
        _client(args).set_password(args.name, _read_password(args.name))
        print(f"password of {args.name} changed")
    elif args.user_command == "delete":
        _client(args).delete_user(args.name)
        print(f"user {args.name} deleted")
    elif args.user_command == "list":
        users = _client(args).users()
        print(json.dumps(users, indent=2) if args.json else
              "\n".join(f"{u['name']:<24} {u.get('role') or '?'}" for u in users))
    else:
        raise ConfigError("usage: baton user add|passwd|delete NAME, or baton user list")
    return 0


def cmd_certs(args) -> int:
    from cli import certs

    if args.certs_command == "ca":
        certs.make_ca(args.dir)
        print(os.path.join(args.dir, "ca.pem"))
        return 0
    if args.certs_command in ("issue", "agent"):
        ca = certs.load_ca(args.dir)
        if args.certs_command == "agent":
            cert, key = certs.issue_agent_cert(ca, args.dir, args.name, any_name=args.any_name)
        else:
            cert, key = certs.issue_cert(ca, args.dir, args.out or args.name[0], args.name, ips=args.ip)
        print(cert)
        print(key)
        return 0
    raise ConfigError("usage: baton certs ca --dir D | baton certs issue --dir D --name HOST"
                      " | baton certs agent --dir D --name AGENT")


def cmd_up(args) -> int:
    from cli.up import run_up

    return run_up(args)


def cmd_demo(args) -> int:
    from cli.demo import run_demo

    return run_demo(args)


def cmd_run(args) -> int:
    from cli.run import run

    command = args.build_command[1:] if args.build_command[:1] == ["--"] else args.build_command
    farm = None
    if not args.local_only and args.max_remote != 0:
        from cli import compiler_facts

        # The first jobs' first needs, looked up on the other core while grpc and etcd3 import.
        compiler_facts.prefetch()
    if not args.local_only:
        from cli.initiator import Farm
        from cluster.names import read_token

        ca = None
        if args.grpc_ca:
            with open(args.grpc_ca, "rb") as f:
                ca = f.read()
        client = None
        if bool(args.tls_cert) != bool(args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if args.tls_cert:
            with open(args.tls_key, "rb") as k, open(args.tls_cert, "rb") as c:
                client = (k.read(), c.read())
        farm = Farm(etcd=etcd_config(args), cluster=args.cluster, token=read_token(args.agent_token_file),
                    root_certificates=ca, wait=args.remote_wait, client=client)
    return run(command, local_only=args.local_only, max_remote=args.max_remote, as_json=args.json, farm=farm)


COMMANDS = {"coordinator": cmd_coordinator, "agent": cmd_agent, "etcd": cmd_etcd, "status": cmd_status,
            "backup": cmd_backup, "switchover": cmd_switchover, "build": cmd_build, "user": cmd_user,
            "certs": cmd_certs, "up": cmd_up, "demo": cmd_demo, "run": cmd_run}


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


# Commands whose process ends without the interpreter's teardown (entry()).
QUICK_EXIT = frozenset({"run"})
_command: str | None = None   # the command main() ran last


def entry() -> None:
    """The `baton` program (pyproject.toml's script, `python -m cli`): main(), then exit.
    After `baton run`, once its output is flushed, the process ends at once (os._exit): its
    work is done and written by then, and the interpreter's teardown (a last collection over
    grpc's, protobuf's and etcd3's objects and the build's caches) took 30-60 ms that every
    build's wall paid (bench/README.md, issue 14). In-process callers of main() keep the
    normal exit."""
    code = main()
    if _command in QUICK_EXIT:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    global _command
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cc"]:
        # A compiler's arguments are not baton's options: no parser.
        from cli.cc import main as cc_main

        return cc_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args = fill_defaults(args)
    except ConfigError as exc:  # e.g. a --context without context.json
        print(f"baton {args.command or ''}: {exc}".replace(" :", ":"), file=sys.stderr)
        return USAGE_ERROR
    if not args.command:
        parser.print_help()
        return OK
    _command = args.command
    from cluster import logs

    # The daemons name themselves in JSON lines (--log-format json); commands log as text.
    logs.configure(logging.DEBUG if args.verbose else logging.INFO, getattr(args, "log_format", "text"),
                   daemon=getattr(args, "name", None) if args.command in ("coordinator", "agent") else None)
    from cli.api_client import ApiError

    try:
        return COMMANDS[args.command](args) or OK
    except (BatonError, ApiError) as exc:
        print(f"baton {args.command}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`baton status | head`): nothing is wrong; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as exc:  # noqa: BLE001 - a user sees one sentence; -v shows where it came from
        logging.getLogger("baton").debug("unexpected error", exc_info=True)
        print(f"baton {args.command}: unexpected error: {type(exc).__name__}: {exc}"
              + ("" if args.verbose else " (run with -v for details)"), file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
