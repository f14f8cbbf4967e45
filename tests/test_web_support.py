"""Fixtures for the web tests (imported by tests/test_web_*.py) and unit tests of the
web's pure logic (throttle, agent states, leadership verdicts).

Leadership is set up like the real daemon does it: a leader key created by a
transaction comparing its create revision with 0, attached to a lease, and a
daemon state file written with cluster.daemon_state.write_state.
"""
from __future__ import annotations

import re

import pytest

from cluster import users as user_store
from cluster.daemon_state import write_state
from cluster.keys import Keys, encode
from cluster.records import AgentRecord, LeaderRecord
from cluster.settings import Settings
from lease.election import Fence
from web import create_app
from web.authority import Authority
from web.cluster_view import Snapshot, agent_rows
from web.security import LoginThrottle

ADMIN_PW = "admin-secret-1"
VIEWER_PW = "viewer-secret-1"


class FakeClock:
    """Unix time that tests move by hand (session expiry, lockouts)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Cluster:
    """One test cluster in the shared etcd: leader key, daemon state files, users, apps."""

    def __init__(self, etcd, keys: Keys, url: str, tmp_path):
        self.etcd, self.keys, self.url, self.tmp = etcd, keys, url, tmp_path
        self.leases: list[int] = []
        self.epoch: int | None = None

    # -- leadership, the way the daemon does it ---------------------------------
    def take_leadership(self, name: str, role: str = "primary", web: str | None = None) -> int:
        """Create the leader key (txn: create revision == 0, with a lease); returns the epoch."""
        self.drop_leadership()
        lease = self.etcd.lease_grant(30)
        self.leases.append(lease)
        value = encode({"name": name, "role": role, "grpc": "127.0.0.1:1", "web": web or f"http://{name}.test:8000"})
        ok, _ = self.etcd.txn([self.etcd.ops.create(self.keys.leader) == 0],
                              [self.etcd.ops.put(self.keys.leader, value, lease=lease)])
        assert ok
        _, meta = self.etcd.get(self.keys.leader)
        self.epoch = meta.create_revision
        return self.epoch

    def drop_leadership(self) -> None:
        self.etcd.delete(self.keys.leader)
        self.epoch = None

    def state_path(self, name: str) -> str:
        return str(self.tmp / f"{name}.state.json")

    def write_state(self, name: str, role: str = "primary", acting: bool = True, epoch: int | None = None,
                    **extra) -> str:
        path = self.state_path(name)
        write_state(path, dict({"name": name, "role": role, "acting": acting,
                                "epoch": self.epoch if epoch is None else epoch,
                                "leader": name if acting else None, "lease_ttl_left": 9.5,
                                "lease_renewal_latency": 0.004, "failovers": 2, "agents_connected": 3,
                                "tasks_dispatched": 17, "sentence": "test"}, **extra))
        return path

    def register(self, name: str, role: str, primary: str, web: str | None = None) -> None:
        """coordinators/<name>, as the daemon registers itself (with a lease)."""
        lease = self.etcd.lease_grant(30)
        self.leases.append(lease)
        self.etcd.put(self.keys.coordinator(name), encode({
            "name": name, "role": role, "primary": primary, "grpc": "127.0.0.1:1",
            "web": web or f"http://{name}.test:8000", "version": "test", "ready": True}), lease=lease)

    @property
    def fence(self) -> Fence:
        """The fence of the test's leader (cluster.epoch)."""
        return Fence(self.etcd, self.keys.leader, self.epoch)

    def add_user(self, name: str, role: str, password: str) -> None:
        leading = self.epoch is not None
        epoch = self.epoch if leading else self.take_leadership("setup")
        fence = Fence(self.etcd, self.keys.leader, epoch)
        user_store.add_user(self.etcd, self.keys, name, role, password, fence)
        if not leading:
            self.drop_leadership()

    def app(self, name: str = "p1", role: str = "primary", clock=None, **extra):
        # A generous renew deadline: a loaded machine must not make the state file look stale.
        cfg = {"BATON_ETCD": self.url, "BATON_CLUSTER": self.keys.cluster, "BATON_NAME": name,
               "BATON_ROLE": role, "BATON_DAEMON_STATE": self.state_path(name), "BATON_RENEW_DEADLINE": 60,
               "SECRET_KEY": "test-secret-key-0123456789abcdef", "BATON_CLOCK": clock or FakeClock(),
               "TESTING": True}
        if role == "backup":
            cfg["BATON_PRIMARY"] = extra.pop("primary", "p1")
        cfg.update(extra)
        return create_app(cfg)

    def close(self) -> None:
        for lease in self.leases:
            try:
                self.etcd.lease_revoke(lease)
            except Exception:  # noqa: BLE001 - already gone
                pass


@pytest.fixture
def cluster(etcd, keys, etcd_url, tmp_path):
    """A cluster where p1 (primary) leads and acts, with an admin and a viewer."""
    c = Cluster(etcd, keys, etcd_url, tmp_path)
    c.register("p1", "primary", "p1")
    c.take_leadership("p1")
    c.write_state("p1")
    c.add_user("admin", "admin", ADMIN_PW)
    c.add_user("viewer", "viewer", VIEWER_PW)
    yield c
    c.close()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def app(cluster, clock):
    application = cluster.app("p1", clock=clock)
    yield application
    from web import etcd_access
    etcd_access.close(application)


@pytest.fixture
def client(app):
    return app.test_client()


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client, name: str = "admin", password: str = ADMIN_PW) -> str:
    """Log in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": name, "password": password, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_of(client.get("/").get_data(as_text=True))


def basic(name: str = "admin", password: str = ADMIN_PW) -> dict:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


# -- unit tests of pure logic -------------------------------------------------------

def test_throttle_locks_after_max_failures_and_unlocks_after_lockout():
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=3, lockout=60, clock=clock)
    for _ in range(2):
        throttle.failed("bob", "1.2.3.4")
    assert throttle.seconds_locked("bob", "1.2.3.4") == 0
    throttle.failed("bob", "1.2.3.4")
    assert throttle.seconds_locked("bob", "1.2.3.4") == 60
    assert throttle.seconds_locked("bob", "5.6.7.8") == 0  # another address is not locked
    assert throttle.seconds_locked("alice", "1.2.3.4") == 0  # nor another user
    clock.advance(61)
    assert throttle.seconds_locked("bob", "1.2.3.4") == 0


def test_throttle_success_resets_the_count():
    throttle = LoginThrottle(max_failures=2, lockout=60, clock=FakeClock())
    throttle.failed("bob", "a")
    throttle.succeeded("bob", "a")
    throttle.failed("bob", "a")
    assert throttle.seconds_locked("bob", "a") == 0


def _snap(**kw) -> Snapshot:
    base = dict(revision=1, leader=None, epoch=None, leader_kv=(None, None), coordinators={}, agents={},
                agent_config={}, runtime={}, settings=Settings(), switchover=None, build_status={}, events=[])
    base.update(kw)
    base["agents"] = {name: AgentRecord.parse(value, name) for name, value in base["agents"].items()}
    return Snapshot(**base)


def test_agent_states_cover_offline_unsubscribed_disabled_idle_busy():
    snap = _snap(
        agents={"busy": {"cores": 4, "coordinator": "p1"}, "idle": {"cores": 2}, "dis": {"cores": 2},
                "unsub": {"cores": 2}, "new": {"cores": 1}},
        agent_config={"busy": {"subscribed": True}, "dis": {"disabled": True, "subscribed": True},
                      "unsub": {"subscribed": False}, "gone": {"disabled": False, "subscribed": True}},
        runtime={"agents": {"busy": {"connected": True, "running": 3, "builds": ["b-1"]}}},
        settings=Settings(auto_subscribe=False))
    rows = {r["name"]: r for r in agent_rows(snap)}
    assert rows["busy"]["label"] == "busy 3/4" and rows["busy"]["state"] == "busy"
    assert rows["busy"]["coordinator"] == "p1" and rows["busy"]["builds"] == ["b-1"]
    assert rows["idle"]["state"] == "unsubscribed"  # auto-subscribe is off and no admin choice yet
    assert rows["dis"]["state"] == "disabled"
    assert rows["new"]["state"] == "unsubscribed"
    assert rows["unsub"]["state"] == "unsubscribed"
    assert rows["gone"]["state"] == "offline"
    auto = {r["name"]: r for r in agent_rows(_snap(agents={"new": {"cores": 1}, "unsub": {"cores": 1}},
                                                   agent_config={"unsub": {"subscribed": False}}))}
    assert auto["new"]["state"] == "idle"
    assert auto["unsub"]["state"] == "idle"  # auto-subscribe on: everyone is subscribed


def _auth(**kw) -> Authority:
    base = dict(name="p1", role="primary", leader={"name": "p1"}, epoch=7, leader_lease=1,
                state={"acting": True, "epoch": 7})
    base.update(kw)
    if base["leader"] is not None:  # the leader key's value, as the record read_authority makes of it
        base["leader"] = LeaderRecord.parse(encode(base["leader"]), base["epoch"], base["leader_lease"])
    return Authority(**base)


def test_authority_writable_only_for_acting_leading_primary():
    assert _auth().writable
    assert not _auth(state={"acting": True, "epoch": 6}).writable           # stale epoch in the daemon
    assert not _auth(state=None).writable                                   # stale or missing state file
    assert not _auth(state={"acting": False, "epoch": 7}).writable
    assert not _auth(leader={"name": "b1"}).writable                        # somebody else leads
    backup = _auth(name="b1", role="backup", leader={"name": "b1"})
    assert backup.leads and not backup.writable                             # a backup is view only
    assert "backup coordinator b1" in backup.refusal("p1")
    assert "b1 is" in _auth(leader={"name": "b1"}).refusal()


def test_authority_builds_where_agents_are_served_changes_only_on_the_leading_primary():
    backup = _auth(name="b1", role="backup", leader={"name": "b1"})
    assert backup.accepts_builds and not backup.writable
    assert backup.target(work=True, primary="p1") == "b1" and backup.target(work=False, primary="p1") == "p1"
    idle = _auth(name="b1", role="backup", leader={"name": "p1"})
    assert not idle.accepts_builds and idle.target(work=True, primary="p1") == "p1"
    assert "go to p1" in idle.build_refusal()
    assert not _auth(state=None).accepts_builds                             # our daemon does not act
    primary_out = _auth(leader={"name": "b1"})
    assert primary_out.target(work=True, primary="p1") == "b1" and primary_out.target(work=False, primary="p1") == "p1"
    assert _auth(leader=None, epoch=None).target(work=True, primary="p1") is None
