"""docker-compose.yml as compose reads it, and its cluster run without Docker.

`load_compose()` reads the file the way compose does (YAML anchors and merge
keys, ${VAR} interpolation; `MissingVariable` for a required one that is
unset); `flags`, `etcd_members`, `baton_services` and `cert_path` pick its
parts. `ComposeOnLoopback(services, tmp)` runs the services' own commands,
environments and healthchecks as local processes.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.harness.etcd import etcd_binary
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ISSUE_CERTS = ROOT / "deploy" / "docker" / "issue-certs.sh"

# What .env would hold; interpolation refuses a compose file that needs more.
TEST_ENV = {"BATON_AGENT_TOKEN": "token-for-tests", "BATON_ADMIN_PASSWORD": "pw-for-tests"}

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\})")


class MissingVariable(Exception):
    pass


def interpolate(value, env: dict):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$ in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        val = env.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-"):
            return arg if unset else val
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return val
        return "" if val is None else val

    return _VAR.sub(sub, value)


def load_compose(env: dict | None = None) -> dict:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves anchors and << merges
    return interpolate(raw, TEST_ENV if env is None else env)


def flags(argv: list[str]) -> dict[str, str | bool]:
    """--x v and --x=v pairs of a command line (a flag without value maps to True)."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                k, v = arg.split("=", 1)
                out[k] = v
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[arg] = argv[i + 1]
                i += 1
            else:
                out[arg] = True
        i += 1
    return out


def etcd_members(services) -> dict:
    return {n: s for n, s in services.items() if s.get("entrypoint") == ["etcd"]}


def baton_services(services, kind: str) -> dict:
    return {n: s for n, s in services.items() if (s.get("command") or [None])[0] == kind}


def cert_path(host: str) -> tuple[str, str]:
    return f"/certs/{host}.pem", f"/certs/{host}-key.pem"


class ComposeOnLoopback:
    """Runs docker-compose.yml's commands and environments as local processes.

    Only what Docker provides is translated: service host names become
    localhost on free ports, /certs, /var/lib/etcd and /var/lib/baton become
    directories under tmp. Every flag, TLS file and setting comes from the
    compose file, so a wrong flag or a broken TLS link fails here as it
    would in the containers. Certificates also name localhost, the one
    addition (no DNS for etcd1, p1... on this machine).
    """

    def __init__(self, services: dict, tmp: Path):
        self.services, self.tmp = services, tmp
        self.port: dict[tuple[str, int], int] = {}
        for name, svc in services.items():
            for container_port in ((2379, 2380) if svc.get("entrypoint") == ["etcd"] else (7000, 8000)):
                self.port[(name, container_port)] = free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    def rewrite(self, text: str, service: str) -> str:
        def host_port(m: re.Match) -> str:
            host, port = m.group(2), int(m.group(3))
            if host == "0.0.0.0":
                return f"{m.group(1)}127.0.0.1:{self.port[(service, port)]}"
            return f"{m.group(1)}localhost:{self.port[(host, port)]}"
        text = re.sub(r"(https://|^)([A-Za-z0-9.]+):(2379|2380|7000|8000)\b", host_port, text)
        text = text.replace("/certs/", f"{self.tmp}/certs/")
        for path in ("/var/lib/etcd", "/var/lib/baton"):
            text = text.replace(path, f"{self.tmp}/{service}{path}")
        return text

    def argv(self, service: str) -> list[str]:
        svc = self.services[service]
        args = [self.rewrite(a, service) for a in svc["command"]]
        if "--advertise" in args:
            args[args.index("--advertise") + 1] = "localhost"
        return args

    def env(self, service: str) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "BATON_"))}
        return {**base, **{k: self.rewrite(v, service) for k, v in self.services[service]["environment"].items()}}

    def issue_certs(self) -> None:
        specs = [s if "localhost" in s.split(",") else s + ",localhost"
                 for s in self.services["certs"]["command"]]
        env = {**os.environ, "CA_DIR": str(self.tmp / "ca"), "CERTS_DIR": str(self.tmp / "certs")}
        done = subprocess.run(["sh", str(ISSUE_CERTS), *specs], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self, service: str) -> None:
        svc = self.services[service]
        if svc.get("entrypoint") == ["etcd"]:
            argv = [etcd_binary()]
            (self.tmp / service / "var/lib/etcd").mkdir(parents=True, exist_ok=True)
        else:
            argv = [sys.executable, "-m", "cli", *self.argv(service)]
            (self.tmp / service / "var/lib/baton").mkdir(parents=True, exist_ok=True)
        with open(self.tmp / f"{service}.log", "wb") as log:
            self.procs[service] = subprocess.Popen(argv, env=self.env(service), stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self, service: str) -> bool:
        """Run the service's own compose healthcheck, rewritten for loopback."""
        proc = self.procs[service]
        assert proc.poll() is None, f"{service} exited:\n{self.log_tail(service)}"
        test = [self.rewrite(a, service) for a in self.services[service]["healthcheck"]["test"][1:]]
        test[0] = shutil.which(test[0]) or test[0]
        return subprocess.run(test, capture_output=True, timeout=30, env=self.env(service)).returncode == 0

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.tmp / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Like `docker compose down`: Baton processes first (they resign through etcd), then etcd."""
        baton = [p for n, p in self.procs.items() if not self.services[n].get("entrypoint")]
        etcd = [p for n, p in self.procs.items() if self.services[n].get("entrypoint")]
        for group in (baton, etcd):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(5)
