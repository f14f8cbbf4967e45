"""Login, logout, sessions that expire when idle, throttling, CSRF, cookie flags."""
from __future__ import annotations

from tests.test_web_support import (ADMIN_PW, VIEWER_PW, app, basic, client, clock, cluster, csrf_of,  # noqa: F401
                                    login)


def test_pages_redirect_to_login_and_api_answers_401(client):
    response = client.get("/agents")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    api = client.get("/api/v1/status")
    assert api.status_code == 401 and "error" in api.get_json()
    assert api.headers["WWW-Authenticate"].startswith("Basic")


def test_login_then_logout(client):
    token = login(client)
    assert client.get("/").status_code == 200
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_wrong_password_is_refused(client):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": "admin", "password": "nope", "csrf_token": token})
    assert response.status_code == 401
    assert "Wrong user name or password" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_login_redirects_only_to_local_paths(client):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PW, "csrf_token": token,
                                           "next": "https://evil.example/"})
    assert response.headers["Location"] == "/"
    client.post("/logout", data={"csrf_token": csrf_of(client.get("/").get_data(as_text=True))})
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PW, "csrf_token": token,
                                           "next": "/builds"})
    assert response.headers["Location"] == "/builds"


def test_session_cookie_flags(client):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PW, "csrf_token": token})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP in this app


def test_cookie_is_secure_when_served_over_https(cluster):
    app = cluster.app("p1", BATON_HTTPS="1")
    client = app.test_client()
    token = csrf_of(client.get("/login", base_url="https://localhost").get_data(as_text=True))
    response = client.post("/login", base_url="https://localhost",
                           data={"username": "admin", "password": ADMIN_PW, "csrf_token": token})
    assert "Secure" in response.headers["Set-Cookie"]


def test_session_expires_after_45_idle_minutes(client, clock):
    login(client)
    clock.advance(44 * 60)
    assert client.get("/").status_code == 200  # activity: the idle clock restarts
    clock.advance(44 * 60)
    assert client.get("/agents").status_code == 200
    clock.advance(45 * 60 + 1)
    response = client.get("/agents")
    assert response.status_code == 302 and "expired=1" in response.headers["Location"]
    assert client.get("/api/v1/status").status_code == 401  # the session is gone for good


def test_polling_does_not_keep_a_session_alive(client, clock):
    login(client)
    poll = {"X-Baton-Poll": "1"}
    clock.advance(20 * 60)
    assert client.get("/api/v1/status", headers=poll).status_code == 200
    clock.advance(20 * 60)
    assert client.get("/api/v1/status", headers=poll).status_code == 200
    clock.advance(10 * 60)  # 50 minutes since the user last did something
    assert client.get("/api/v1/status", headers=poll).status_code == 401


def test_login_throttled_after_five_failures(client, clock):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    for _ in range(5):
        r = client.post("/login", data={"username": "admin", "password": "bad", "csrf_token": token})
        assert r.status_code == 401
    # Locked out now, even with the right password.
    r = client.post("/login", data={"username": "admin", "password": ADMIN_PW, "csrf_token": token})
    assert r.status_code == 429 and "Too many failed logins" in r.get_data(as_text=True)
    # Basic auth for the same user from the same address is locked too.
    assert client.get("/api/v1/status", headers=basic()).status_code == 429
    # Another user is not affected.
    r = client.post("/login", data={"username": "viewer", "password": VIEWER_PW, "csrf_token": token})
    assert r.status_code == 302
    clock.advance(61)
    assert client.get("/api/v1/status", headers=basic()).status_code == 200


def test_basic_auth_failures_are_throttled(client):
    for _ in range(5):
        assert client.get("/api/v1/status", headers=basic("admin", "wrong")).status_code == 401
    assert client.get("/api/v1/status", headers=basic()).status_code == 429


def test_form_post_without_csrf_token_is_refused(client):
    login(client)
    response = client.post("/settings", data={"selected_backup": "", "max_cores_per_build": "3",
                                              "deselect_after": "60", "failback_delay": "5"})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    wrong = client.post("/settings", data={"csrf_token": "forged", "max_cores_per_build": "3",
                                           "deselect_after": "60", "failback_delay": "5"})
    assert wrong.status_code == 400


def test_api_write_with_session_needs_csrf_header_but_basic_does_not(client, cluster):
    token = login(client)
    assert client.put("/api/v1/settings", json={"max_cores_per_build": 4}).status_code == 400
    assert client.put("/api/v1/settings", json={"max_cores_per_build": 4},
                      headers={"X-CSRF-Token": token}).status_code == 200
    fresh = client.application.test_client()
    assert fresh.put("/api/v1/settings", json={"max_cores_per_build": 5}, headers=basic()).status_code == 200


def test_login_form_itself_needs_the_token(client):
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PW})
    assert response.status_code == 400


def test_same_credentials_on_another_coordinator(cluster):
    backup = cluster.app("b1", role="backup", primary="p1")
    c = backup.test_client()
    login(c)
    assert c.get("/").status_code == 200
    assert c.get("/api/v1/status", headers=basic("viewer", VIEWER_PW)).status_code == 200
