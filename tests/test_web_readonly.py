"""Every way a write is refused with 403: viewer, backup, primary not leading, daemon not
acting, and leadership lost between the check and the commit (the fence)."""
from __future__ import annotations

import json

import pytest

from cluster.keys import encode
from tests.test_web_support import VIEWER_PW, app, basic, client, clock, cluster, login  # noqa: F401 (fixtures)

BUILD = json.dumps({"name": "x", "tasks": [{"id": "a", "cmd": "true"}]})

API_WRITES = [
    ("put", "/api/v1/settings", {"json": {"max_cores_per_build": 3}}),
    ("post", "/api/v1/builds", {"data": BUILD, "content_type": "application/json"}),
    ("post", "/api/v1/users", {"json": {"name": "eve", "role": "viewer", "password": "long-enough"}}),
    ("post", "/api/v1/agents/a1", {"json": {"disabled": True}}),
]

FORM_WRITES = [
    ("/settings", {"selected_backup": "", "max_cores_per_build": "3", "deselect_after": "60",
                   "failback_delay": "5", "auto_subscribe": "on"}),
    ("/builds", {"buildfile": BUILD}),
    ("/users", {"name": "eve", "role": "viewer", "password": "long-enough"}),
    ("/agents/a1", {"action": "disable"}),
]


def nothing_written(cluster) -> bool:
    e, k = cluster.etcd, cluster.keys
    return (e.get(k.settings)[0] is None and e.get_prefix(k.builds) == [] and e.get(k.user("eve"))[0] is None
            and e.get(k.agent_settings("a1"))[0] is None)


def assert_api_refused(client, cluster, leader_web: str | None = None):
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 1}))
    for method, path, kw in API_WRITES:
        response = getattr(client, method)(path, headers=basic(), **kw)
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        body = response.get_json()
        assert body["error"]
        if leader_web is not None:
            assert body["leader_web"] == leader_web, body
    assert nothing_written(cluster)


def assert_forms_refused(client, cluster):
    token = login(client)
    for path, data in FORM_WRITES:
        response = client.post(path, data=dict(data, csrf_token=token))
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        assert "Not allowed here" in response.get_data(as_text=True)
    assert nothing_written(cluster)


def test_viewer_cannot_change_anything(client, cluster):
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 1}))
    for method, path, kw in API_WRITES + [("post", "/api/v1/switchover", {"json": {}})]:
        response = getattr(client, method)(path, headers=basic("viewer", VIEWER_PW), **kw)
        assert response.status_code == 403, path
        assert "viewer" in response.get_json()["error"]
    token = login(client, "viewer", VIEWER_PW)
    for path, data in FORM_WRITES:
        assert client.post(path, data=dict(data, csrf_token=token)).status_code == 403, path
    assert nothing_written(cluster)
    assert client.get("/users").status_code == 403  # the users page is for admins


def test_backup_is_view_only_and_names_the_primary(cluster):
    cluster.register("b1", "backup", "p1", web="https://b1.example:8000")
    app = cluster.app("b1", role="backup", primary="p1")
    cluster.write_state("b1", role="backup", acting=False, epoch=None)
    client = app.test_client()
    assert_api_refused(client, cluster, leader_web="http://p1.test:8000/")
    response = client.put("/api/v1/settings", json={"max_cores_per_build": 3}, headers=basic())
    assert "backup coordinator b1" in response.get_json()["error"]
    assert response.get_json()["leader"] == "p1"
    assert_forms_refused(app.test_client(), cluster)
    page = client.get("/", headers=basic()).get_data(as_text=True)
    assert "This is the backup coordinator b1 — view only." in page
    assert 'href="http://p1.test:8000/"' in page
    assert "serving agents now" not in page


def test_backup_serving_agents_says_so_and_stays_view_only(cluster):
    cluster.register("b1", "backup", "p1")
    cluster.take_leadership("b1", role="backup")
    cluster.write_state("b1", role="backup")
    app = cluster.app("b1", role="backup", primary="p1")
    client = app.test_client()
    page = client.get("/agents", headers=basic()).get_data(as_text=True)
    assert "This is the backup coordinator b1 — view only. It is serving agents now" in page
    assert_api_refused(client, cluster)


def test_primary_not_leading_is_view_only_naming_the_leader(cluster):
    cluster.register("b1", "backup", "p1", web="http://b1.test:8000")
    cluster.take_leadership("b1", role="backup", web="http://b1.test:8000")
    app = cluster.app("p1")
    client = app.test_client()
    assert_api_refused(client, cluster, leader_web="http://b1.test:8000/")
    response = client.put("/api/v1/settings", json={"max_cores_per_build": 3}, headers=basic())
    assert response.get_json()["leader"] == "b1"
    page = client.get("/settings", headers=basic()).get_data(as_text=True)
    assert "b1 is serving agents — this coordinator (p1) is view only." in page
    assert "<fieldset disabled>" in page  # controls are disabled too
    assert_forms_refused(app.test_client(), cluster)


def test_leader_key_names_us_but_daemon_not_acting(cluster):
    app = cluster.app("p1")
    client = app.test_client()
    cluster.write_state("p1", acting=False)
    assert_api_refused(client, cluster)
    cluster.write_state("p1", acting=True, epoch=cluster.epoch - 1)  # acting for an older epoch
    assert_api_refused(client, cluster)


def test_stale_daemon_state_file_means_view_only(cluster, tmp_path):
    import os
    app = cluster.app("p1")
    path = cluster.write_state("p1")
    os.utime(path)  # fresh mtime does not matter: the file's own "updated" field does
    state = json.loads(open(path).read())
    state["updated"] -= 600
    with open(path, "w") as f:
        json.dump(state, f)
    assert_api_refused(app.test_client(), cluster)


class _StealLeadershipBeforeCommit:
    """Proxy of the web's etcd client: just before the first write transaction, another
    coordinator takes the leader key (a new epoch), as if our check went stale."""

    def __init__(self, etcd, cluster):
        self._etcd, self._cluster, self.fired = etcd, cluster, False

    def __getattr__(self, name):
        return getattr(self._etcd, name)

    def txn(self, compare, success=(), failure=()):
        if compare and not self.fired:
            self.fired = True
            self._cluster.take_leadership("b1", role="backup")
        return self._etcd.txn(compare, success, failure)


@pytest.mark.parametrize("method,path,kw", API_WRITES[:3])
def test_stale_epoch_at_commit_is_refused(cluster, method, path, kw):
    import os

    from web import etcd_access
    app = cluster.app("p1")
    client = app.test_client()
    assert client.get("/api/v1/status", headers=basic()).status_code == 200  # creates the client
    real = etcd_access.client(app)
    proxy = _StealLeadershipBeforeCommit(real, cluster)
    app.extensions["baton_etcd"] = (os.getpid(), proxy)
    response = getattr(client, method)(path, headers=basic(), **kw)
    assert proxy.fired
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.get_json()["leader"] == "b1"
    assert nothing_written(cluster)
    real.close()


def test_switchover_refused_where_not_leading(cluster):
    cluster.register("b1", "backup", "p1")
    app = cluster.app("b1", role="backup", primary="p1")
    response = app.test_client().post("/api/v1/switchover", json={"target": "b1"}, headers=basic())
    assert response.status_code == 403
    assert cluster.etcd.get(cluster.keys.switchover)[0] is None
