"""A whole Baton cluster on this machine, as real processes (`baton up`: cli/up.py).

An embedded single-member etcd, a primary, M backups (the first one
selected) and N agents, each its own process with its own log under
--dir, TLS on every link by default (a local CA issues certificates that
name "localhost", and each agent its own client certificate naming it,
certs/agent-<name>.pem: the coordinators accept its Hello only for that name). The same class drives `baton demo`, the end-to-end tests
and the benchmarks, so what they exercise is what users run.

A directory is one cluster: started again on the same --dir it reuses the
etcd data, the certificates, the agent token and the admin password, which
it keeps in <dir>/admin-password (mode 0600) because etcd only stores its
hash and the coordinator creates the admin user only once. It also writes
<dir>/context.json (cli.context), so that commands run there find the
cluster without flags.

etcd is never open (docs/etcd-auth.md): it requires a client certificate of
the cluster's CA and has etcd auth on; every process has its own certificate
naming its etcd user (cli/etcd_identities.py). `baton up --no-tls` turns TLS
off for the UIs and the agents' gRPC only (etcd_tls=True). Tests and benches
that leave etcd_tls unset get an etcd that follows `tls`.

Build tasks are untrusted code (docs/design.md section 9), so nothing they
can reach holds a secret: the cluster directory (token, password, keys,
etcd data) is mode 0700; the CA that issues certificates lives in <dir>/ca
(0700), and processes are given only <dir>/certs (ca.pem and their own
certificate and key); agents work in a sibling directory, <dir>-work/<agent>,
and run their tasks as `nobody` when `baton up` runs as root.

Over 400 lines: one class, whose start order (secrets, certificates, etcd and
its identities, coordinators, agents, context) and the waits tests use read
top to bottom; its processes, ports and secret files are cli/processes.py,
the command's foreground loop cli/up.py.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from agent.sandbox import first_closed_parent, resolve_task_user
from cli.etcd_identities import CLI_IDENTITY, ROOT_IDENTITY, EtcdIdentities
from cli.context import write_context
from cli.processes import PortPicker, Proc, find_etcd, read_secret, write_secret
from cluster.keys import Keys
from cluster.records import AgentRecord, LeaderRecord
from lease.client import EtcdConfig, connect
from lease.errors import ConfigError

HOST = "localhost"  # certificates name the host, not its IP address
ADMIN_PASSWORD_FILE = "admin-password"
AGENT_TOKEN_FILE = "agent-token"
# The agent name on the certificate `baton run` presents (the context names it): any
# certificate of the cluster CA will do, and the context already holds the admin's password.
RUN_CLIENT = "baton-run"


class LocalCluster:
    """etcd + coordinators + agents on this machine. `start()`, use, `stop()`."""

    def __init__(self, directory: str | Path, *, agents: int = 2, backups: int = 1, cores: int = 2,
                 ttl: int = 10, tls: bool = True, etcd_urls: str | None = None, cluster: str = "default",
                 admin_password: str | None = None, agent_token: str | None = None, base_port: int = 0,
                 failback_delay: float | None = None, grace: float | None = None,
                 coordinator_args: tuple[str, ...] = (), test_hooks: bool = False, web: bool = True,
                 agent_lease_ttl: int | None = None, etcd_for: dict[str, str] | None = None,
                 etcd_tls: bool | None = None):
        self.dir = Path(directory).resolve()
        self.n_agents, self.n_backups, self.cores, self.ttl = agents, backups, cores, ttl
        self.tls = tls
        self.cluster = cluster
        self.keys = Keys(cluster)
        self.ports = PortPicker(base_port)
        # A password given (argument or environment) must match the directory's; else the kept one.
        self._given_password = admin_password or os.environ.get("BATON_ADMIN_PASSWORD") or None
        self.admin_password = (self._given_password or read_secret(self.dir / ADMIN_PASSWORD_FILE)
                               or secrets.token_urlsafe(12))
        self.agent_token = agent_token or read_secret(self.dir / AGENT_TOKEN_FILE) or secrets.token_urlsafe(24)
        self.failback_delay = failback_delay
        self.grace = grace
        self.coordinator_args = tuple(coordinator_args)
        self.test_hooks = test_hooks
        self.web = web
        self.initial_backup: str | None = None  # set by start()
        self.agent_lease_ttl = agent_lease_ttl
        self.etcd_for = dict(etcd_for or {})  # coordinator name -> etcd URLs it uses instead
        self.etcd_proc: Proc | None = None
        self._external_etcd = etcd_urls
        self.etcd_urls = etcd_urls or ""
        self.coordinators: dict[str, Proc] = {}
        self.agents: dict[str, Proc] = {}
        self.web_urls: dict[str, str] = {}
        self.grpc_ports: dict[str, int] = {}
        self.certs_dir = self.dir / "certs"
        self.ca_dir = self.dir / "ca"   # the CA's key: read by this process only, never given to another
        # etcd with client certificates and auth whenever we start it with TLS (an etcd given: as `tls` says).
        self.etcd_tls = tls if etcd_tls is None or etcd_urls else etcd_tls
        self.etcd_auth = self.etcd_tls and not etcd_urls
        self.etcd_identities = EtcdIdentities(self.certs_dir, cluster, self.ca_dir)
        self.work_dir = self.dir.parent / f"{self.dir.name}-work"   # agents' work dirs, outside self.dir
        self._etcd = None
        # Addresses etcd listens on (when started here); a test harness adds one that a
        # coordinator in another network namespace can reach (tests/harness/netns.py).
        self.etcd_listen: tuple[str, ...] = ("127.0.0.1",)

    # -- set-up -------------------------------------------------------------
    def start(self, wait: bool = True, select_backup: bool = True) -> "LocalCluster":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._keep_admin_password()
        if self.n_agents:
            self._make_work_dir()
        if self.tls or self.etcd_tls:
            self._issue_certs()
        write_secret(self.dir / AGENT_TOKEN_FILE, self.agent_token)
        if not self._external_etcd:
            self._start_etcd()
        # The primary selects b1 itself the first time it leads (--initial-backup, the
        # same first-start setting docker-compose.yml uses); a later choice stays.
        self.initial_backup = "b1" if select_backup and self.n_backups and self.web else None
        self.add_coordinator("p1", "primary")
        for i in range(1, self.n_backups + 1):
            self.add_coordinator(f"b{i}", "backup")
        self.write_context()
        if wait:
            self.wait_leader("p1", timeout=30)
            if self.web:
                self.wait_web("p1", timeout=30)
        for i in range(1, self.n_agents + 1):
            self.add_agent(f"a{i}")
        if wait:
            self.wait_agents(self.n_agents, timeout=30)
            if self.initial_backup:
                self.wait_registered("b1", timeout=30)
                self._wait(lambda: self.etcd().get(self.keys.settings)[0] is not None, 30,
                           "the primary's first settings")
        return self

    def _keep_admin_password(self) -> None:
        """Keep the admin password with the cluster's data, or refuse a directory whose
        cluster has another one (its admin would be locked out by the login throttle)."""
        path = self.dir / ADMIN_PASSWORD_FILE
        kept = read_secret(path)
        if kept is None:
            if not self._external_etcd and (self.dir / "etcd").exists() and not self._given_password:
                raise ConfigError(f"{self.dir} holds a cluster whose admin password is not kept in {path}: "
                                  "set BATON_ADMIN_PASSWORD to that password, or use another --dir")
            write_secret(path, self.admin_password)
        elif kept != self.admin_password:
            raise ConfigError(f"{self.dir} holds a cluster with another admin password (kept in {path}): "
                              "unset BATON_ADMIN_PASSWORD to use it, or use another --dir")

    def _make_work_dir(self) -> None:
        """The agents' work root, refused in one sentence when the task user
        cannot reach it (a parent closed to others, e.g. a --dir under /root)."""
        self.work_dir.mkdir(mode=0o711, exist_ok=True)
        user = resolve_task_user(None)
        closed = first_closed_parent(str(self.work_dir), user) if user else None
        if closed is not None:
            raise ConfigError(f"build tasks run as {user.name}, who cannot enter {closed}: "
                              f"use a --dir whose parent others can enter (e.g. under /tmp or /srv)")

    def _issue_certs(self) -> None:
        from cli import certs

        for directory in (self.ca_dir, self.certs_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        if (self.certs_dir / certs.CA_KEY_FILE).exists() and not (self.ca_dir / certs.CA_KEY_FILE).exists():
            # A directory from before the CA had its own: move its key out of what processes are given.
            for name in (certs.CA_CERT_FILE, certs.CA_KEY_FILE):
                os.replace(self.certs_dir / name, self.ca_dir / name)
        if not (self.ca_dir / certs.CA_CERT_FILE).exists():
            certs.make_ca(self.ca_dir)
        ca = certs.load_ca(self.ca_dir)
        shutil.copyfile(ca.cert_path, self.certs_dir / certs.CA_CERT_FILE)
        if not (self.certs_dir / f"{HOST}.pem").exists():
            certs.issue_cert(ca, self.certs_dir, HOST, [HOST])
        if self.etcd_auth:
            self.etcd_identities.issue_base()

    def agent_cert(self, name: str) -> tuple[str, str]:
        """Agent `name`'s certificate and key (issued once, kept in certs/): the
        coordinators accept its Hello only for that name, and initiators its
        Helper service only for that name (docs/design.md section 9). One of a
        directory made before agents served compile jobs with TLS is issued again."""
        from cli import certs

        cert, key = self.certs_dir / f"agent-{name}.pem", self.certs_dir / f"agent-{name}-key.pem"
        if not (cert.exists() and key.exists() and certs.serves_compile_jobs(cert, name)):
            cert, key = certs.issue_agent_cert(certs.load_ca(self.ca_dir), self.certs_dir, name)
        return str(cert), str(key)

    def write_context(self) -> None:
        """<dir>/context.json, so that commands run there need no flags (cli.context)."""
        cert, key = self.etcd_identities.files(CLI_IDENTITY) if self.etcd_auth else (None, None)
        run = {"agent_token_file": str((self.dir / AGENT_TOKEN_FILE).resolve())}
        if self.ca:   # gRPC with TLS: `baton run` presents a certificate of the cluster's CA
            tls_cert, tls_key = self.agent_cert(RUN_CLIENT)
            run.update(grpc_ca=self.ca, tls_cert=str(Path(tls_cert).resolve()), tls_key=str(Path(tls_key).resolve()))
        write_context(self.dir, etcd=self.etcd_urls, cluster=self.cluster, etcd_ca=self.etcd_ca, ca=self.ca,
                      etcd_cert=cert, etcd_key=key, user="admin", password_file=self.dir / ADMIN_PASSWORD_FILE,
                      run=run)

    @property
    def ca(self) -> str | None:  # of the UIs and the agents' gRPC; etcd_ca: etcd's
        return str(self.certs_dir / "ca.pem") if self.tls else None

    @property
    def etcd_ca(self) -> str | None:
        return str(self.certs_dir / "ca.pem") if self.etcd_tls else None

    def _tls_files(self) -> tuple[str, str]:
        return str(self.certs_dir / f"{HOST}.pem"), str(self.certs_dir / f"{HOST}-key.pem")

    def _start_etcd(self) -> None:
        port, peer = self.ports.pick(2379), self.ports.pick(2380)
        scheme = "https" if self.etcd_tls else "http"
        url, peer_url = f"{scheme}://{HOST}:{port}", f"{scheme}://{HOST}:{peer}"
        listen = ",".join(f"{scheme}://{host}:{port}" for host in self.etcd_listen)
        listen_peer = f"{scheme}://127.0.0.1:{peer}"
        argv = [find_etcd(), "--name", "etcd", "--data-dir", str(self.dir / "etcd"),
                "--listen-client-urls", listen, "--advertise-client-urls", url,
                "--listen-peer-urls", listen_peer, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"etcd={peer_url}", "--log-level", "warn"]
        if self.etcd_tls:
            cert, key = self._tls_files()
            # Every client must present a certificate of our CA; its common name is its etcd user.
            argv += ["--cert-file", cert, "--key-file", key,
                     "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", self.etcd_ca,
                     "--peer-client-cert-auth", "--trusted-ca-file", self.etcd_ca, "--client-cert-auth"]
        self.etcd_urls = url
        self.etcd_proc = Proc("etcd", argv, self.dir / "logs" / "etcd.log").start()
        self._wait(lambda: self.etcd().revision() > 0, 30, "etcd to answer")
        if self.etcd_auth:
            self.etcd_identities.set_up(self.etcd())

    def etcd_config(self) -> EtcdConfig:
        """This class's own client: etcd's root user when etcd auth is on."""
        cert, key = self.etcd_identities.files(ROOT_IDENTITY) if self.etcd_auth else (None, None)
        return EtcdConfig.from_urls(self.etcd_urls, ca_cert=self.etcd_ca, cert=cert, key=key)

    def etcd(self):
        if self._etcd is None:
            self._etcd = connect(self.etcd_config())
        return self._etcd

    def cli_etcd_args(self) -> list[str]:
        """What a `baton` command needs to reach this cluster's etcd (the CLI's identity)."""
        args = ["--etcd", self.etcd_urls, "--cluster", self.cluster]
        if self.etcd_tls:
            args += ["--etcd-ca", self.etcd_ca]
        if self.etcd_auth:
            cert, key = self.etcd_identities.files(CLI_IDENTITY)
            args += ["--etcd-cert", cert, "--etcd-key", key]
        return args

    def _etcd_args(self, kind: str, name: str, etcd_urls: str | None = None) -> list[str]:
        args = ["--etcd", etcd_urls or self.etcd_urls, "--cluster", self.cluster]
        if self.etcd_tls:
            args += ["--etcd-ca", self.etcd_ca]
        if self.etcd_auth:
            cert, key = self.etcd_identities.process(self.etcd(), kind, name)
            args += ["--etcd-cert", cert, "--etcd-key", key]
        return args

    def coordinator_argv(self, name: str, role: str, etcd_urls: str | None = None) -> list[str]:
        if name not in self.grpc_ports:
            index = len(self.grpc_ports)
            self.grpc_ports[name] = self.ports.pick(7000 + index)
            web_port = self.ports.pick(8000 + index)
            scheme = "https" if self.tls else "http"
            self.web_urls[name] = f"{scheme}://{HOST}:{web_port}"
        web_port = int(self.web_urls[name].rsplit(":", 1)[1])
        argv = [sys.executable, "-m", "cli", "coordinator", "--name", name, "--role", role,
                "--grpc", f"127.0.0.1:{self.grpc_ports[name]}", "--web", f"127.0.0.1:{web_port}",
                "--advertise", HOST, "--ttl", str(self.ttl), "--state-dir", str(self.dir / "state"),
                "--agent-token-file", str(self.dir / "agent-token")]
        argv += self._etcd_args("coordinator", name, etcd_urls)
        if role == "backup":
            argv += ["--primary", "p1"]
        elif self.initial_backup:
            argv += ["--initial-backup", self.initial_backup]
        if self.tls:
            cert, key = self._tls_files()
            argv += ["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca]
        if self.failback_delay is not None:
            argv += ["--failback-delay", str(self.failback_delay)]
        if self.grace is not None:
            argv += ["--grace", str(self.grace)]
        if self.test_hooks:
            argv.append("--test-hooks")
        if not self.web:
            argv.append("--no-web")
        return argv + list(self.coordinator_args)

    def add_coordinator(self, name: str, role: str, etcd_urls: str | None = None) -> Proc:
        """Start a coordinator; etcd_urls overrides the etcd it talks to (e.g. through a proxy)."""
        argv = self.coordinator_argv(name, role, etcd_urls or self.etcd_for.get(name))
        env = {"BATON_ADMIN_PASSWORD": self.admin_password}
        proc = Proc(name, argv, self.dir / "logs" / f"{name}.log", env=env).start()
        self.coordinators[name] = proc
        return proc

    def restart_coordinator(self, name: str) -> Proc:
        old = self.coordinators[name]
        old.kill()
        return self.add_coordinator(name, "primary" if name == "p1" else "backup")

    def add_agent(self, name: str, cores: int | None = None, env: dict[str, str] | None = None) -> Proc:
        """Start an agent working in <dir>-work/<name>; as root, its tasks run as nobody.
        `env`: variables to set in its environment (a test's PATH)."""
        if not self.work_dir.exists():
            self._make_work_dir()
        argv = [sys.executable, "-m", "agent", "--name", name, "--cores", str(cores or self.cores),
                "--workdir", str(self.work_dir / name),
                "--agent-token-file", str(self.dir / "agent-token"), "--helper-listen", "127.0.0.1:0",
                ] + self._etcd_args("agent", name)
        if self.tls:
            cert, key = self.agent_cert(name)
            argv += ["--grpc-ca", self.ca, "--tls-cert", cert, "--tls-key", key]
        if self.agent_lease_ttl:
            argv += ["--lease-ttl", str(self.agent_lease_ttl)]
        proc = Proc(name, argv, self.dir / "logs" / f"{name}.log", env=dict(env or {})).start()
        self.agents[name] = proc
        return proc

    # -- observation ----------------------------------------------------------
    def leader(self) -> LeaderRecord | None:
        raw, meta = self.etcd().get(self.keys.leader)
        return LeaderRecord.parse(raw, meta.create_revision, meta.lease_id) if raw is not None else None

    def agent_records(self) -> dict[str, AgentRecord]:
        records = {}
        for value, meta in self.etcd().get_prefix(self.keys.agents):
            name = Keys.name_of(meta.key, self.keys.agents)
            record = AgentRecord.parse(value, name)
            if record is not None:
                records[name] = record
        return records

    def agents_on(self, coordinator: str) -> list[str]:
        return sorted(n for n, rec in self.agent_records().items() if rec.coordinator == coordinator)

    def wait_leader(self, name: str, timeout: float = 30) -> LeaderRecord:
        return self._wait(lambda: (lambda l: l if l and l.name == name else None)(self.leader()),
                          timeout, f"{name} to lead")

    def wait_registered(self, name: str, timeout: float = 30) -> None:
        self._wait(lambda: self.etcd().get(self.keys.coordinator(name))[0] is not None, timeout,
                   f"{name} to register")

    def wait_agents(self, count: int, timeout: float = 30, coordinator: str | None = None) -> None:
        def ready():
            recs = self.agent_records()
            if coordinator:
                return sum(1 for r in recs.values() if r.coordinator == coordinator) >= count
            return sum(1 for r in recs.values() if r.coordinator) >= count
        self._wait(ready, timeout, f"{count} agents connected" + (f" to {coordinator}" if coordinator else ""))

    def wait_web(self, name: str, timeout: float = 30) -> None:
        def answers() -> bool:
            self.api(name).request("GET", "/healthz")  # raises until it answers 200
            return True
        self._wait(answers, timeout, f"{name}'s web UI")

    def select_backup(self, name: str | None, timeout: float = 30) -> None:
        """Settings › Backup through the primary's API; a busy start-up may answer 503
        (etcd slow to a new worker) for a moment, so retry until it is saved."""
        from cli.api_client import ApiError

        def saved() -> bool:
            try:
                self.api("p1").select_backup(name)
                return True
            except ApiError as exc:
                if exc.status in (0, 403, 503):  # not up, not leading yet, or etcd busy: transient here
                    return False
                raise
        self._wait(saved, timeout, f"backup {name} selected")

    def api(self, name: str, user: str = "admin", password: str | None = None):
        from cli.api_client import ApiClient

        return ApiClient(self.web_urls[name], user=user, password=password or self.admin_password, ca=self.ca)

    def _wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - starting services answer errors for a while
                last = exc
            for proc in [self.etcd_proc, *self.coordinators.values()]:
                if proc is not None and proc.popen is not None and proc.popen.poll() not in (None, -9, -15):
                    raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))

    # -- tear-down ---------------------------------------------------------------
    def stop(self) -> None:
        for proc in list(self.agents.values()):
            proc.stop()
        for proc in reversed(list(self.coordinators.values())):
            proc.stop()
        if self._etcd is not None:
            self._etcd.close()
            self._etcd = None
        if self.etcd_proc is not None:
            self.etcd_proc.stop()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
