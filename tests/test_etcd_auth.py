"""etcd is never open (docs/design.md section 9): a real etcd run as `baton up` runs it
(client certificates required, etcd auth on) with the roles of cluster.etcd_roles."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cli.api_client import find_web_url
from cli.processes import find_etcd
from cluster import etcd_roles
from cluster.keys import Keys, encode
from lease import auth
from lease.client import connect
from lease.errors import EtcdAuthError, EtcdUnavailable
from lease.watcher import Watcher
from tests.harness.tls import TlsEtcd
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "authed"
KEYS = Keys(CLUSTER)


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory):
    server = TlsEtcd(tmp_path_factory.mktemp("auth-etcd"), auth=True).start()
    server.enable_auth(*etcd_roles.cluster_access(CLUSTER, ["p1", "b1"], ["a1", "a2"]))
    server.enable_auth(*etcd_roles.cluster_access("other", ["p1"], []))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(auth_etcd):
    made = {}

    def client(user: str | None):
        if user not in made:
            made[user] = connect(auth_etcd.client_url, timeout=2.0, **auth_etcd.connect_kwargs(user))
        return made[user]

    yield client
    for c in made.values():
        c.close()


@pytest.fixture(scope="module")
def coordinator(clients):
    """p1 leads: the leader key and its coordinator record on its session lease, a user."""
    etcd = clients(etcd_roles.coordinator_user(CLUSTER, "p1"))
    lease = etcd.lease_grant(30)
    etcd.put(KEYS.leader, encode({"name": "p1", "role": "primary", "grpc": "h:1", "web": "https://h:2"}), lease=lease)
    etcd.put(KEYS.coordinator("p1"), encode({"name": "p1", "role": "primary", "web": "https://h:2"}), lease=lease)
    etcd.put(KEYS.user("admin"), encode({"role": "admin", "scrypt": {"hash": "secret"}}))
    return etcd


def test_an_agent_reads_the_leader_and_writes_its_own_key_with_its_own_lease(clients, coordinator):
    agent = clients(etcd_roles.agent_user(CLUSTER, "a1"))
    assert agent.get(KEYS.leader)[0] is not None
    assert agent.range_response(KEYS.leader).kvs
    assert [m.key for _, m in agent.get_prefix(KEYS.coordinators)] == [KEYS.coordinator("p1").encode()]
    assert agent.revision(KEYS.leader) > 0
    lease = agent.lease_grant(10)
    agent.put(KEYS.agent("a1"), encode({"name": "a1", "cores": 2}), lease=lease)
    assert agent.lease_keepalive(lease) > 0
    assert agent.delete(KEYS.agent("a1"))
    agent.lease_revoke(lease)


def test_an_agent_watches_the_leader_key(clients, coordinator):
    agent = clients(etcd_roles.agent_user(CLUSTER, "a2"))
    seen = []
    watcher = Watcher(agent, KEYS.leader, on_events=seen.extend).start()
    try:
        wait_until(watcher.connected.is_set, 10, message="the agent's watch to open")
        coordinator.put(KEYS.leader, encode({"name": "p1", "role": "primary", "grpc": "h:1", "web": "https://h:2"}),
                        lease=coordinator.get(KEYS.leader)[1].lease_id)
        wait_until(lambda: seen, 10, message="the leader key's change to reach the agent")
    finally:
        watcher.stop()


@pytest.mark.parametrize("what", ["read users", "read a build", "read everything", "write the leader",
                                  "write another agent", "write a user", "revoke the leader's lease",
                                  "read outside the cluster"])
def test_an_agent_is_refused_everything_else(clients, coordinator, what):
    agent = clients(etcd_roles.agent_user(CLUSTER, "a1"))
    attempt = {
        "read users": lambda: agent.get(KEYS.user("admin")),
        "read a build": lambda: agent.get_prefix(KEYS.builds),
        "read everything": lambda: agent.get_prefix(KEYS.root),
        "write the leader": lambda: agent.put(KEYS.leader, b"{}"),
        "write another agent": lambda: agent.put(KEYS.agent("a2"), b"{}"),
        "write a user": lambda: agent.put(KEYS.user("evil"), b"{}"),
        "revoke the leader's lease": lambda: agent.lease_revoke(coordinator.get(KEYS.leader)[1].lease_id),
        "read outside the cluster": lambda: agent.revision(),
    }[what]
    with pytest.raises(EtcdAuthError):
        attempt()
    assert coordinator.get(KEYS.leader)[0] is not None


def test_the_cli_reads_only_where_the_web_ui_is(clients, coordinator):
    cli = clients(etcd_roles.status_user(CLUSTER))
    assert find_web_url(cli, KEYS) == "https://h:2"
    assert find_web_url(cli, KEYS, prefer_leader=False) == "https://h:2"
    for attempt in (lambda: cli.get(KEYS.user("admin")), lambda: cli.get(KEYS.agent("a1")),
                    lambda: cli.put(KEYS.coordinator("x"), b"{}"), lambda: cli.put(KEYS.leader, b"{}")):
        with pytest.raises(EtcdAuthError):
            attempt()


def test_coordinators_read_and_write_the_cluster_and_revoke_each_others_sessions(clients, coordinator):
    backup = clients(etcd_roles.coordinator_user(CLUSTER, "b1"))
    assert backup.get(KEYS.user("admin"))[0] is not None
    assert backup.revision(KEYS.leader) > 0
    lease = coordinator.lease_grant(30)
    coordinator.put(KEYS.coordinator("p9"), b"{}", lease=lease)
    backup.lease_revoke(lease)  # the crash-failover path: a backup ends a dead primary's session
    assert coordinator.get(KEYS.coordinator("p9"))[0] is None
    seen = []
    watcher = Watcher(backup, KEYS.root, prefix=True, on_events=seen.extend).start()
    try:
        wait_until(watcher.connected.is_set, 10, message="the backup's watch to open")
        coordinator.put(KEYS.settings, b"{}")
        wait_until(lambda: seen, 10, message="a change under the prefix to reach the backup")
    finally:
        watcher.stop()


def test_another_clusters_coordinator_is_refused(clients, coordinator):
    stranger = clients(etcd_roles.coordinator_user("other", "p1"))
    stranger.put(Keys("other").leader, b"{}")
    with pytest.raises(EtcdAuthError):
        stranger.get(KEYS.user("admin"))
    with pytest.raises(EtcdAuthError):
        stranger.put(KEYS.leader, b"{}")


def test_a_certificate_that_names_no_user_is_refused(clients, coordinator):
    nobody = clients("localhost")
    with pytest.raises(EtcdAuthError):
        nobody.get(KEYS.leader)
    with pytest.raises(EtcdAuthError):
        nobody.put(KEYS.leader, b"{}")


def test_a_client_with_only_the_ca_cannot_connect(auth_etcd, coordinator):
    ca_only = connect(auth_etcd.client_url, timeout=1.0, **auth_etcd.connect_kwargs())
    try:
        with pytest.raises(EtcdUnavailable):
            ca_only.get(KEYS.user("admin"))
    finally:
        ca_only.close()


def test_applying_again_is_idempotent_and_removes_extra_permissions(auth_etcd, clients):
    root = clients(auth.ROOT)
    admin = auth.Admin(root)
    shared = etcd_roles.agent_shared_role(CLUSTER)
    admin.grant(shared.name, auth.Permission(auth.READ, KEYS.users, KEYS.users[:-1] + "0"))
    admin.grant_role(etcd_roles.agent_user(CLUSTER, "a1"), etcd_roles.coordinator_role(CLUSTER).name)
    auth_etcd.enable_auth(*etcd_roles.cluster_access(CLUSTER, ["p1", "b1"], ["a1", "a2"]))
    assert admin.permissions(shared.name) == set(shared.permissions)
    assert admin.user_roles(etcd_roles.agent_user(CLUSTER, "a1")) == {
        shared.name, etcd_roles.agent_own_role(CLUSTER, "a1").name}


def test_the_etcdctl_recipe_sets_up_the_same_roles(tmp_path):
    """docs/etcd-auth.md's commands (cluster.etcd_roles.etcdctl_commands), run with etcdctl."""
    server = TlsEtcd(tmp_path, auth=True).start()
    try:
        root = server.connect_kwargs(auth.ROOT)
        flags = ["--endpoints", server.client_url, "--cacert", root["ca_cert"], "--cert", root["cert"],
                 "--key", root["key"]]
        etcdctl = str(Path(find_etcd()).with_name("etcdctl"))
        for line in etcd_roles.etcdctl_commands(CLUSTER, ["p1"], ["a1"]):
            subprocess.run([etcdctl, *flags, *line.split()[1:]], check=True, capture_output=True, timeout=30)
        admin_client = connect(server.client_url, timeout=2.0, **root)
        try:
            admin = auth.Admin(admin_client)
            roles, users = etcd_roles.cluster_access(CLUSTER, ["p1"], ["a1"])
            for role in roles:
                assert admin.permissions(role.name) == set(role.permissions), role.name
            for user, user_roles in users.items():
                assert admin.user_roles(user) == set(user_roles), user
        finally:
            admin_client.close()
        agent = connect(server.client_url, timeout=2.0, **server.connect_kwargs(etcd_roles.agent_user(CLUSTER, "a1")))
        try:
            with pytest.raises(EtcdAuthError):
                agent.get(KEYS.user("admin"))
        finally:
            agent.close()
    finally:
        server.stop()


def test_the_docs_show_the_generated_recipe():
    doc = (ROOT / "docs" / "etcd-auth.md").read_text()
    for line in etcd_roles.etcdctl_commands("default", ["p1"], ["a1"]):
        assert line in doc, line


def test_baton_run_reads_the_leaders_lease_ttl_as_the_cli_or_an_agent(clients, coordinator):
    """`baton run`'s default --remote-wait is the leader's lease ttl (cli.core_client.remote_wait):
    the users it runs as (the CLI's, an agent's) may read it, since they may read the lease's keys."""
    lease = coordinator.range_response(KEYS.leader).kvs[0].lease
    for user in (etcd_roles.status_user(CLUSTER), etcd_roles.agent_user(CLUSTER, "a1")):
        assert clients(user).lease_granted_ttl(lease) == 30
