"""The HTTP API's trust rules (docs/design.md section 9): writes only as JSON (or a
YAML build file) with a user's credentials, never from another site; 401 before
anything else for an unauthenticated API write; sessions that end server-side;
login throttling shared by the whole cluster and limited per address."""
from __future__ import annotations

import json

from cluster import users as user_store
from tests.test_web_support import (ADMIN_PW, VIEWER_PW, app, basic, client, clock, cluster, csrf_of,  # noqa: F401
                                    login)

BUILD = json.dumps({"name": "hello", "tasks": [{"id": "one", "cmd": "true"}]})


def _builds(cluster) -> int:
    return len(cluster.etcd.get_prefix(cluster.keys.builds, keys_only=True))


# -- 1. a cross-site page can never submit a build ----------------------------------

def test_cross_site_text_plain_build_with_cached_basic_credentials_is_refused(client, cluster):
    headers = dict(basic(), Origin="https://evil.example")
    response = client.post("/api/v1/builds", data=BUILD, headers=headers, content_type="text/plain")
    assert response.status_code == 403, response.get_data(as_text=True)
    response = client.post("/api/v1/builds", data=BUILD, headers=dict(basic(), Referer="https://evil.example/x"),
                           content_type="application/json")
    assert response.status_code == 403
    assert _builds(cluster) == 0


def test_api_writes_must_be_json(client, cluster):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = client.post("/api/v1/builds", data=BUILD, headers=basic(), content_type=ctype)
        assert response.status_code == 415, (ctype, response.get_data(as_text=True))
        assert "application/json" in response.get_json()["error"]
    response = client.put("/api/v1/settings", data=json.dumps({"auto_subscribe": False}), headers=basic(),
                          content_type="text/plain")
    assert response.status_code == 415
    assert _builds(cluster) == 0


def test_same_origin_and_cli_writes_still_work(client, cluster):
    same = client.post("/api/v1/builds", data=BUILD, content_type="application/json",
                       headers=dict(basic(), Origin="http://localhost", Referer="http://localhost/builds"))
    assert same.status_code == 201, same.get_data(as_text=True)
    cli = client.post("/api/v1/builds", data=BUILD, headers=basic(), content_type="application/json")
    assert cli.status_code == 201
    token = login(client)
    form = client.post("/builds", data={"csrf_token": token, "buildfile": BUILD},
                       headers={"Origin": "http://localhost", "Referer": "http://localhost/builds"})
    assert form.status_code == 302, form.get_data(as_text=True)
    assert _builds(cluster) == 3


def test_cross_site_ui_form_is_refused_even_with_the_token(client):
    token = login(client)
    response = client.post("/logout", data={"csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert client.get("/").status_code == 200, "the refused logout did not end the session"


# -- 2. authentication before anything else on the API --------------------------------

def test_unauthenticated_api_write_gets_401_with_www_authenticate(client, cluster):
    for method, path in (("post", "/api/v1/builds"), ("put", "/api/v1/settings"), ("post", "/api/v1/switchover")):
        response = getattr(client, method)(path, data=BUILD, content_type="application/json")
        assert response.status_code == 401, (path, response.get_data(as_text=True))
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert _builds(cluster) == 0


# -- 3. sessions end on the server ----------------------------------------------------

def _cookie(client, app):
    return client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value


def _stolen(app, value):
    """Another browser (or another gunicorn worker's client) holding a copy of the cookie."""
    other = app.test_client()
    other.set_cookie(app.config["SESSION_COOKIE_NAME"], value)
    return other


def test_logout_ends_a_copied_session_cookie(client, app, cluster, clock):
    token = login(client)
    copy = _stolen(app, _cookie(client, app))
    assert copy.get("/").status_code == 200
    # A second worker of the same coordinator (same key, same etcd) honours the logout too.
    worker2 = cluster.app("p1", clock=clock)
    copy2 = _stolen(worker2, _cookie(client, app))
    assert copy2.get("/").status_code == 200
    client.post("/logout", data={"csrf_token": token})
    assert copy.get("/").status_code == 302
    assert copy2.get("/").status_code == 302
    assert copy.get("/api/v1/status").status_code == 401


def test_password_change_ends_the_users_sessions(client, app, cluster):
    login(client, "viewer", VIEWER_PW)
    assert client.get("/").status_code == 200
    user_store.set_password(cluster.etcd, cluster.keys, "viewer", "another-secret-2", cluster.fence)
    assert client.get("/").status_code == 302


def test_deleting_a_user_ends_its_sessions_even_if_the_name_comes_back(client, app, cluster):
    login(client, "viewer", VIEWER_PW)
    user_store.delete_user(cluster.etcd, cluster.keys, "viewer", cluster.fence)
    user_store.add_user(cluster.etcd, cluster.keys, "viewer", "viewer", VIEWER_PW, cluster.fence)
    assert client.get("/").status_code == 302


# -- 4. throttling across the cluster and per address -----------------------------------

def _login_as(client, name, password, address):
    token = csrf_of(client.get("/login", environ_base={"REMOTE_ADDR": address}).get_data(as_text=True))
    return client.post("/login", data={"username": name, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def test_a_lockout_on_one_coordinator_holds_on_the_other(client, cluster, clock):
    cluster.register("b1", "backup", "p1")
    backup = cluster.app("b1", role="backup", clock=clock).test_client()
    for _ in range(5):
        assert _login_as(client, "admin", "wrong", "10.1.1.1").status_code == 401
    assert _login_as(backup, "admin", ADMIN_PW, "10.1.1.1").status_code == 429
    assert backup.get("/api/v1/status", headers=basic(),
                      environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code == 429
    # Failures are counted on the backup too: two on each add up.
    for c in (client, backup, client, backup):
        _login_as(c, "viewer", "wrong", "10.1.1.2")
    _login_as(backup, "viewer", "wrong", "10.1.1.2")
    assert _login_as(client, "viewer", VIEWER_PW, "10.1.1.2").status_code == 429


def test_one_address_cannot_spray_many_user_names(client):
    statuses = [_login_as(client, f"user{i}", "Password1", "10.2.2.2").status_code for i in range(25)]
    assert 429 in statuses, statuses
    # Another address is not affected.
    assert _login_as(client, "admin", ADMIN_PW, "10.2.2.3").status_code == 302
