"""Every way a write is refused with 403: viewer, backup, primary not leading, daemon not
acting, and leadership lost between the check and the commit (the fence). Builds and
their cancellation are work, not changes (docs/design.md section 1): the coordinator
serving agents takes them whatever its role, and a refusal names where to go."""
from __future__ import annotations

import json

import pytest

from cluster.keys import encode
from tests.test_web_support import VIEWER_PW, app, basic, client, clock, cluster, login  # noqa: F401 (fixtures)

BUILD = json.dumps({"name": "x", "tasks": [{"id": "a", "cmd": "true"}]})

API_BUILD = ("post", "/api/v1/builds", {"data": BUILD, "content_type": "application/json"})
API_CHANGES = [
    ("put", "/api/v1/settings", {"json": {"max_cores_per_build": 3}}),
    ("post", "/api/v1/users", {"json": {"name": "eve", "role": "viewer", "password": "long-enough"}}),
    ("post", "/api/v1/agents/a1", {"json": {"disabled": True}}),
]
API_WRITES = API_CHANGES[:1] + [API_BUILD] + API_CHANGES[1:]

FORM_BUILD = ("/builds", {"buildfile": BUILD})
FORM_CHANGES = [
    ("/settings", {"selected_backup": "", "max_cores_per_build": "3", "deselect_after": "60",
                   "failback_delay": "5", "auto_subscribe": "on"}),
    ("/users", {"name": "eve", "role": "viewer", "password": "long-enough"}),
    ("/agents/a1", {"action": "disable"}),
]
FORM_WRITES = FORM_CHANGES + [FORM_BUILD]


def no_change_written(cluster) -> bool:
    e, k = cluster.etcd, cluster.keys
    return (e.get(k.settings)[0] is None and e.get(k.user("eve"))[0] is None
            and e.get(k.agent_settings("a1"))[0] is None)


def nothing_written(cluster) -> bool:
    return no_change_written(cluster) and cluster.etcd.get_prefix(cluster.keys.builds) == []


def assert_api_refused(client, cluster, leader_web: str | None = None, writes=API_WRITES, coordinator=None):
    """Each write answers 403 naming the coordinator to use (and its web address when given)."""
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 1}))
    for method, path, kw in writes:
        response = getattr(client, method)(path, headers=basic(), **kw)
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        body = response.get_json()
        assert body["error"]
        if leader_web is not None:
            assert body["leader_web"] == body["coordinator_web"] == leader_web, body
        if coordinator is not None:
            assert body["coordinator"] == coordinator, body
    assert no_change_written(cluster)
    if API_BUILD in writes:
        assert nothing_written(cluster)


def assert_forms_refused(client, cluster, writes=FORM_WRITES):
    token = login(client)
    for path, data in writes:
        response = client.post(path, data=dict(data, csrf_token=token))
        assert response.status_code == 403, (path, response.get_data(as_text=True))
        assert "Not allowed here" in response.get_data(as_text=True)
    assert no_change_written(cluster)
    if FORM_BUILD in writes:
        assert nothing_written(cluster)


def submitted_build(client) -> str:
    response = client.post("/api/v1/builds", data=BUILD, content_type="application/json", headers=basic())
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


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


def test_backup_serving_agents_takes_builds_and_cancels_but_no_changes(cluster):
    cluster.register("b1", "backup", "p1")
    cluster.take_leadership("b1", role="backup")
    cluster.write_state("b1", role="backup")
    app = cluster.app("b1", role="backup", primary="p1")
    client = app.test_client()
    page = client.get("/agents", headers=basic()).get_data(as_text=True)
    assert "This is the backup coordinator b1, serving agents now because the primary is unavailable. " \
           "It accepts builds and their cancellation; settings, users and agent configuration change only " \
           "on the primary p1." in page
    # Changes: 403 naming the primary.
    assert_api_refused(client, cluster, leader_web="http://p1.test:8000/", writes=API_CHANGES, coordinator="p1")
    refused = client.put("/api/v1/settings", json={"max_cores_per_build": 3}, headers=basic()).get_json()
    assert "accepts builds" in refused["error"] and "on p1 once it is back" in refused["error"]
    assert_forms_refused(app.test_client(), cluster, writes=FORM_CHANGES)
    # Work: a build through the API, its cancellation, and the same through the forms.
    build_id = submitted_build(client)
    assert cluster.etcd.get(cluster.keys.status_of_build(build_id))[0] is not None
    response = client.post(f"/api/v1/builds/{build_id}/cancel", headers=basic())
    assert response.status_code == 202 and response.get_json()["cancel"] == "requested"
    cancel = json.loads(cluster.etcd.get(cluster.keys.cancel_of_build(build_id))[0])
    assert cancel["user"] == "admin"
    again = client.post(f"/api/v1/builds/{build_id}/cancel", headers=basic())
    assert again.status_code == 202 and again.get_json()["cancel"] == "already requested"
    browser = app.test_client()
    token = login(browser)
    page = browser.get("/builds").get_data(as_text=True)
    assert 'Submit build</button>' in page and '<button type="submit" class="primary" >Submit' in page
    form = browser.post("/builds", data={"buildfile": BUILD, "csrf_token": token})
    assert form.status_code == 302 and "/builds/b-" in form.headers["Location"]
    second = form.headers["Location"].rsplit("/", 1)[1]
    assert "Cancel build</button>" in browser.get(f"/builds/{second}").get_data(as_text=True)
    form = browser.post(f"/builds/{second}/cancel", data={"csrf_token": token})
    assert form.status_code == 302 and cluster.etcd.get(cluster.keys.cancel_of_build(second))[0] is not None
    assert no_change_written(cluster)


def test_cancel_is_csrf_protected_and_refused_for_unknown_or_ended_builds(cluster):
    app = cluster.app("p1")
    client = app.test_client()
    build_id = submitted_build(client)
    browser = app.test_client()
    login(browser)
    forged = browser.post(f"/builds/{build_id}/cancel", data={"csrf_token": "forged"})
    assert forged.status_code == 400 and "security token" in forged.get_data(as_text=True)
    assert cluster.etcd.get(cluster.keys.cancel_of_build(build_id))[0] is None
    assert client.post("/api/v1/builds/b-nosuch/cancel", headers=basic()).status_code == 404
    cluster.etcd.put(cluster.keys.status_of_build(build_id), encode({"state": "done"}))
    ended = client.post(f"/api/v1/builds/{build_id}/cancel", headers=basic())
    assert ended.status_code == 409
    assert ended.get_json()["error"] == f"build {build_id} has already ended (done); there is nothing to cancel"
    assert cluster.etcd.get(cluster.keys.cancel_of_build(build_id))[0] is None


def test_backup_not_serving_refuses_builds_naming_the_serving_coordinator(cluster):
    cluster.register("b1", "backup", "p1")
    cluster.register("b2", "backup", "p1", web="http://b2.test:8000")
    cluster.take_leadership("b2", role="backup", web="http://b2.test:8000")
    app = cluster.app("b1", role="backup", primary="p1")
    cluster.write_state("b1", role="backup", acting=False, epoch=None)
    client = app.test_client()
    assert_api_refused(client, cluster, leader_web="http://b2.test:8000/", writes=[API_BUILD], coordinator="b2")
    refused = client.post("/api/v1/builds", data=BUILD, content_type="application/json", headers=basic())
    assert refused.get_json()["error"] == "b1 is not serving agents right now; builds and cancellations go to " \
                                          "b2, which is."
    assert_api_refused(client, cluster, leader_web="http://p1.test:8000/", writes=API_CHANGES, coordinator="p1")
    assert_forms_refused(app.test_client(), cluster)


def test_primary_not_leading_is_view_only_naming_where_to_go(cluster):
    cluster.register("b1", "backup", "p1", web="http://b1.test:8000")
    cluster.take_leadership("b1", role="backup", web="http://b1.test:8000")
    app = cluster.app("p1")
    client = app.test_client()
    assert_api_refused(client, cluster, leader_web="http://b1.test:8000/", writes=[API_BUILD], coordinator="b1")
    assert_api_refused(client, cluster, writes=API_CHANGES, coordinator="p1")
    response = client.put("/api/v1/settings", json={"max_cores_per_build": 3}, headers=basic())
    assert response.get_json()["leader"] == "b1"
    assert "here once p1 leads again" in response.get_json()["error"]
    page = client.get("/settings", headers=basic()).get_data(as_text=True)
    assert "b1 is serving agents — this coordinator (p1) is view only. Builds go to b1" in page
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
