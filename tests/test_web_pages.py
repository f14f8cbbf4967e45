"""The HTML pages: each renders with live data, and each form does what it says."""
from __future__ import annotations

import io
import json

from cluster.keys import encode
from tests.test_web_support import VIEWER_PW, app, basic, client, clock, cluster, login  # noqa: F401 (fixtures)


def text(response) -> str:
    return response.get_data(as_text=True)


def test_overview_shows_coordinators_leader_epoch_lease_and_events(client, cluster):
    cluster.register("b1", "backup", "p1")
    cluster.etcd.put(cluster.keys.settings, encode({"selected_backup": "b1"}))
    cluster.etcd.put(cluster.keys.event("00000000000000000001-b1"), encode(
        {"type": "handback", "time": 1.0, "coordinator": "b1", "epoch": 4, "detail": "handed back to p1"}))
    login(client)
    page = text(client.get("/"))
    assert 'id="leader-name">p1<' in page
    assert f'id="epoch">{cluster.epoch}<' in page
    assert 'id="lease">10 s<' in page or 'id="lease">9 s<' in page  # 9.5 from the daemon state file
    assert 'id="selected">b1<' in page
    assert "handed back to p1" in page and "tag-ev-handback" in page
    assert 'id="banner" class="banner" hidden' in page  # the leading primary shows no banner
    assert "live.js" in page


def test_agents_page_lists_states_and_actions(client, cluster):
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 4, "host": "h1", "coordinator": "p1"}))
    cluster.etcd.put(cluster.keys.agent_settings("a2"), encode({"disabled": True}))
    cluster.etcd.put(cluster.keys.runtime, encode({"agents": {"a1": {"connected": True, "running": 1,
                                                                     "cores": 4, "builds": ["b-7"]}}}))
    login(client)
    page = text(client.get("/agents"))
    assert "busy 1/4" in page and "b-7" in page and "offline" in page
    assert 'value="disable"' in page and 'value="enable"' in page
    assert "Subscribe" not in page  # auto-subscribe is on: nothing to subscribe


def test_agent_form_actions(client, cluster):
    cluster.etcd.put(cluster.keys.settings, encode({"auto_subscribe": False}))
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 2}))
    token = login(client)
    assert "unsubscribed" in text(client.get("/agents"))
    response = client.post("/agents/a1", data={"action": "subscribe", "csrf_token": token})
    assert response.status_code == 302
    assert json.loads(cluster.etcd.get(cluster.keys.agent_settings("a1"))[0]) == {"subscribed": True}
    page = text(client.get("/agents"))
    assert "Agent a1: subscribed." in page and ">idle<" in page
    client.post("/agents/a1", data={"action": "disable", "csrf_token": token})
    assert json.loads(cluster.etcd.get(cluster.keys.agent_settings("a1"))[0]) == {"subscribed": True,
                                                                                  "disabled": True}
    response = client.post("/agents/a1", data={"action": "explode", "csrf_token": token}, follow_redirects=True)
    assert "unknown agent action" in text(response)


def test_build_submit_by_textarea_and_upload_then_pages(client, cluster):
    token = login(client)
    yaml_file = "name: web-demo\ntasks:\n  - id: a\n    cmd: echo a\n  - id: b\n    cmd: echo b\n    deps: [a]\n"
    response = client.post("/builds", data={"buildfile": yaml_file, "csrf_token": token})
    assert response.status_code == 302 and "/builds/b-" in response.headers["Location"]
    build_id = response.headers["Location"].rsplit("/", 1)[1]
    cluster.etcd.put(cluster.keys.task(build_id, "a"), encode({"state": "failed", "attempt": 2, "agent": "a9",
                                                               "result": {"exit_code": 3, "duration": 75.0,
                                                                          "output_tail": "boom <b>", "agent": "a9"}}))
    page = text(client.get(f"/builds/{build_id}"))
    assert "web-demo" in page and "a9" in page and "1 min 15 s" in page
    assert "boom &lt;b&gt;" in page  # output is escaped, never HTML
    upload = client.post("/builds", data={"csrf_token": token, "buildfile": "",
                                          "file": (io.BytesIO(b'{"name": "up", "tasks": [{"id": "x", "cmd": "true"}]}'),
                                                   "build.json")}, content_type="multipart/form-data")
    assert upload.status_code == 302
    listing = text(client.get("/builds"))
    assert "web-demo" in listing and ">up<" in listing and 'class="bar"' in listing


def test_bad_build_file_in_the_form_shows_the_reason(client, cluster):
    token = login(client)
    response = client.post("/builds", data={"buildfile": "name: x\ntasks:\n  - id: a\n    cmd: make\n    deps: [zz]\n",
                                            "csrf_token": token}, follow_redirects=True)
    assert "flash-error" in text(response) and "zz" in text(response)
    assert cluster.etcd.get_prefix(cluster.keys.builds) == []


def test_unknown_build_page_is_404(client):
    login(client)
    assert client.get("/builds/b-nothing").status_code == 404


def test_settings_save_all(client, cluster):
    cluster.register("b1", "backup", "p1")
    cluster.register("b2", "backup", "p1")
    cluster.register("bx", "backup", "elsewhere")
    token = login(client)
    page = text(client.get("/settings"))
    # Not a bare "bx": the page's random CSRF token may contain those two letters.
    assert '<option value="b1"' in page and '<option value="b2"' in page and 'value="bx"' not in page
    assert ">bx" not in page
    assert ">none</option>" in page and "Save All" in page
    assert 'name="crash_detection" type="checkbox" checked' in page, "crash detection is on by default"
    response = client.post("/settings", data={"csrf_token": token, "selected_backup": "b2", "auto_subscribe": "on",
                                              "max_cores_per_build": "6", "deselect_after": "30",
                                              "failback_delay": "7.5"})
    assert response.status_code == 302
    stored = json.loads(cluster.etcd.get(cluster.keys.settings)[0])
    # An unchecked box is absent from the form: crash detection turned off.
    assert stored == {"selected_backup": "b2", "auto_subscribe": True, "max_cores_per_build": 6,
                      "deselect_after": 1800.0, "failback_delay": 7.5, "crash_detection": False}
    assert '<option value="b2" selected>' in text(client.get("/settings"))
    bad = client.post("/settings", data={"csrf_token": token, "selected_backup": "", "max_cores_per_build": "many",
                                         "deselect_after": "30", "failback_delay": "5"}, follow_redirects=True)
    assert "max cores per build must be a number" in text(bad)
    negative = client.post("/settings", data={"csrf_token": token, "selected_backup": "",
                                              "max_cores_per_build": "-2", "deselect_after": "30",
                                              "failback_delay": "5"}, follow_redirects=True)
    assert "max_cores_per_build must be a whole number" in text(negative)
    assert json.loads(cluster.etcd.get(cluster.keys.settings)[0]) == stored


def test_settings_form_refuses_nan_infinity_and_does_not_echo_long_input(client, cluster):
    token = login(client)
    fields = {"csrf_token": token, "selected_backup": "", "max_cores_per_build": "1", "deselect_after": "30",
              "failback_delay": "5"}
    for field, value, words in [("failback_delay", "nan", "failback_delay"),
                                ("deselect_after", "inf", "deselect_after"),
                                ("max_cores_per_build", "9" * 50_000, "max cores per build must be a number")]:
        page = text(client.post("/settings", data=dict(fields, **{field: value}), follow_redirects=True))
        assert words in page and "9" * 200 not in page, field
    assert cluster.etcd.get(cluster.keys.settings)[0] is None


def test_users_page_lists_and_adds(client, cluster):
    token = login(client)
    page = text(client.get("/users"))
    assert ">admin<" in page and ">viewer<" in page
    response = client.post("/users", data={"csrf_token": token, "name": "erin", "role": "viewer",
                                           "password": "erin-password"}, follow_redirects=True)
    assert "User erin (viewer) added." in text(response)
    assert client.get("/api/v1/status", headers=basic("erin", "erin-password")).status_code == 200
    dup = client.post("/users", data={"csrf_token": token, "name": "erin", "role": "viewer",
                                      "password": "erin-password"}, follow_redirects=True)
    assert "already exists" in text(dup)


def test_viewer_sees_pages_with_controls_disabled_or_hidden(client, cluster):
    login(client, "viewer", VIEWER_PW)
    assert client.get("/").status_code == 200
    settings = text(client.get("/settings"))
    assert "<fieldset disabled>" in settings
    assert "Submit a build" not in text(client.get("/builds"))
    assert "Users</a>" not in settings


def test_big_build_page_shows_a_bounded_number_of_tasks(client, cluster, monkeypatch):
    from web import builds
    monkeypatch.setattr(builds, "TASKS_PER_PAGE", 3)
    spec = {"name": "many", "tasks": [{"id": f"task{i}", "cmd": "true"} for i in range(5)]}
    build_id = client.post("/api/v1/builds", data=json.dumps(spec), headers=basic(),
                           content_type="application/json").get_json()["id"]
    cluster.etcd.put(cluster.keys.task(build_id, "task4"), encode({"state": "running", "attempt": 1, "agent": "a1"}))
    login(client)
    page = text(client.get(f"/builds/{build_id}"))
    assert "task2" in page and "task3" not in page and "Showing the first 3 of 5 tasks." in page
    assert "task3" in text(client.get(f"/builds/{build_id}?all=1"))
    running = text(client.get(f"/builds/{build_id}?state=running"))
    assert "task4" in running and "task0" not in running and 'data-state="running"' in running
