"""Running the web app under gunicorn, as the coordinator daemon does.

`gunicorn_argv` builds the command line (bind HOST:PORT, HTTPS when the
coordinator has a certificate, 2 workers of 8 threads each: gthread workers
that read request heads in their event loop under a deadline, so that slow
clients cannot occupy the threads, web/worker.py), `web_env` the
environment carrying the app's config (web/config.py), and
`start_gunicorn` starts it as a child process. Workers import web.wsgi,
which builds the app from that environment; each worker connects to etcd
on its first request (after fork).

The session-signing key must be the same in every worker (and should
survive restarts so users stay logged in): it is kept in a 0600 file next
to the daemon state file, created on first use.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from typing import Any

WORKERS = 2
THREADS = 8
WORKER_CLASS = "web.worker.HeaderGuardWorker"


def secret_key_for(state_path: str | None) -> str:
    """The coordinator's session key: read from <state dir>/web-secret, created 0600 if missing."""
    if not state_path:
        return secrets.token_hex(32)
    path = os.path.join(os.path.dirname(os.path.abspath(state_path)), "web-secret")
    try:
        with open(path) as f:
            key = f.read().strip()
        if len(key) >= 32:
            return key
    except OSError:
        pass
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def gunicorn_argv(bind: str, certfile: str | None = None, keyfile: str | None = None,
                  workers: int = WORKERS, threads: int = THREADS, python: str | None = None) -> list[str]:
    """The gunicorn command line; HTTPS when certfile and keyfile are given."""
    if bool(certfile) != bool(keyfile):
        raise ValueError("certfile and keyfile must be given together")
    argv = [python or sys.executable, "-m", "gunicorn", "--bind", bind,
            "--workers", str(workers), "--worker-class", WORKER_CLASS, "--threads", str(threads),
            "--timeout", "30", "--graceful-timeout", "5",
            # No access log: every open page polls once a second.
            "--error-logfile", "-", "--log-level", "warning"]
    if certfile:
        argv += ["--certfile", certfile, "--keyfile", keyfile]
    return argv + ["web.wsgi:app"]


def web_env(config: Any, state_path: str | None, secret_key: str | None = None,
            renew_deadline: float | None = None, base: dict | None = None) -> dict[str, str]:
    """The environment for gunicorn from a coordinator.config.CoordinatorConfig."""
    env = dict(os.environ if base is None else base)
    etcd = config.etcd
    env.update({
        "BATON_ETCD": ",".join(etcd.endpoints), "BATON_CLUSTER": config.cluster,
        "BATON_NAME": config.name, "BATON_ROLE": config.role, "BATON_PRIMARY": config.primary or "",
        "BATON_DAEMON_STATE": state_path or "",
        "BATON_RENEW_DEADLINE": str(renew_deadline if renew_deadline is not None
                                    else config.timings.renew_deadline),
        "BATON_HTTPS": "1" if config.tls_cert else "",
        "SECRET_KEY": secret_key or secret_key_for(state_path),
    })
    for name, value in (("BATON_ETCD_CA", etcd.ca_cert), ("BATON_ETCD_CERT", etcd.cert),
                        ("BATON_ETCD_KEY", etcd.key)):
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    # The workers must import this checkout's packages.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _die_with_parent() -> None:
    """In the gunicorn child before exec: get SIGTERM when the coordinator dies.

    A coordinator killed outright (SIGKILL, OOM) must not leave its UI running
    on the web port: a restarted coordinator could not bind it, and the
    orphan would serve a dead coordinator's pages. Linux only; elsewhere the
    supervisor (systemd's control group, the container) cleans up.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_gunicorn(config: Any, state_path: str | None, secret_key: str | None = None,
                   stdout=None, stderr=None) -> subprocess.Popen:
    """Start gunicorn serving this coordinator's UI on config.web; the caller stops it
    (terminate(), then wait). It also ends by itself when the coordinator process dies.
    Call from the thread that lives as long as the coordinator (the main thread):
    the kernel's parent-death signal follows the thread that forked."""
    argv = gunicorn_argv(config.web, config.tls_cert, config.tls_key)
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv:
        # setpriv sets the parent-death signal and execs gunicorn: no Python runs in the
        # forked child. With preexec_fn it did, in a child of a process whose gRPC threads
        # were busy, and gRPC's fork handlers sometimes aborted that child
        # ("ev_epoll1_linux.cc: Check failed"), leaving the coordinator without its UI.
        return subprocess.Popen([setpriv, "--pdeathsig", "SIGTERM", "--", *argv],
                                env=web_env(config, state_path, secret_key), stdout=stdout, stderr=stderr)
    return subprocess.Popen(argv, env=web_env(config, state_path, secret_key), stdout=stdout, stderr=stderr,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
