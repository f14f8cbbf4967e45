"""The JSON API on the leading primary: status, builds, settings, users, agents, events, switchover."""
from __future__ import annotations

import json

import pytest

from cluster.keys import encode
from tests.test_web_support import VIEWER_PW, app, basic, client, clock, cluster  # noqa: F401 (fixtures)

BUILD = {"name": "hello", "tasks": [{"id": "compile-a", "cmd": "cc -c a.c"},
                                    {"id": "link", "cmd": "cc a.o -o app", "deps": ["compile-a"]}]}
YAML_BUILD = "name: yamly\ntasks:\n  - id: one\n    cmd: echo 1\n  - id: two\n    cmd: echo 2\n    deps: [one]\n"


def stored_builds(cluster) -> list:
    return cluster.etcd.get_prefix(cluster.keys.builds) + cluster.etcd.get_prefix(cluster.keys.build_status)


def test_status_shape(client, cluster):
    cluster.register("b1", "backup", "p1")
    cluster.etcd.put(cluster.keys.settings, encode({"selected_backup": "b1"}))
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 4, "coordinator": "p1"}))
    cluster.etcd.put(cluster.keys.runtime, encode({"coordinator": "p1", "epoch": cluster.epoch, "agents": {
        "a1": {"connected": True, "running": 2, "cores": 4, "builds": ["b-x"]}}}))
    cluster.etcd.put(cluster.keys.event("00000000000000000001-p1"), encode(
        {"type": "failover", "time": 1.0, "coordinator": "p1", "epoch": 3, "detail": "took over"}))
    status = client.get("/api/v1/status", headers=basic()).get_json()
    assert status["name"] == "p1" and status["role"] == "primary"
    assert status["is_leader"] is True and status["read_only"] is False
    assert status["leader"]["name"] == "p1" and status["leader"]["epoch"] == cluster.epoch
    assert status["epoch"] == cluster.epoch
    assert status["selected_backup"] == "b1"
    assert {"name": "b1", "role": "backup", "alive": True}.items() <= next(
        c for c in status["coordinators"] if c["name"] == "b1").items()
    agent = status["agents"][0]
    assert (agent["name"], agent["state"], agent["label"], agent["cores"], agent["coordinator"]) == \
        ("a1", "busy", "busy 2/4", 4, "p1")
    assert status["builds"] == {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    assert status["events"][0]["type"] == "failover"
    assert status["lease_ttl_left"] == 9.5  # the daemon's figure while we lead
    assert status["banner"] is None


def test_status_without_leader(client, cluster):
    cluster.drop_leadership()
    status = client.get("/api/v1/status", headers=basic()).get_json()
    assert status["leader"] is None and status["selected_backup"] is None
    assert status["is_leader"] is False and status["read_only"] is True
    assert status["lease_ttl_left"] is None


def test_submit_json_build_and_show_it(client, cluster):
    response = client.post("/api/v1/builds", data=json.dumps(BUILD), headers=basic(),
                           content_type="application/json")
    assert response.status_code == 201
    build_id = response.get_json()["id"]
    assert build_id.startswith("b-")
    spec = json.loads(cluster.etcd.get(cluster.keys.build(build_id))[0])
    assert spec["name"] == "hello" and spec["user"] == "admin" and [t["id"] for t in spec["tasks"]] == \
        ["compile-a", "link"]
    status = json.loads(cluster.etcd.get(cluster.keys.status_of_build(build_id))[0])
    assert status["state"] == "queued" and status["total"] == 2
    # The leader records one task as done.
    cluster.etcd.put(cluster.keys.task(build_id, "compile-a"), encode({
        "state": "done", "attempt": 1, "agent": "a1",
        "result": {"exit_code": 0, "duration": 1.5, "output_tail": "ok\n", "agent": "a1", "attempt": 1}}))
    shown = client.get(f"/api/v1/builds/{build_id}", headers=basic("viewer", VIEWER_PW)).get_json()
    assert shown["id"] == build_id and shown["name"] == "hello" and shown["state"] == "queued"
    tasks = {t["id"]: t for t in shown["tasks"]}
    assert tasks["compile-a"] | {} == tasks["compile-a"]
    assert (tasks["compile-a"]["state"], tasks["compile-a"]["agent"], tasks["compile-a"]["attempt"],
            tasks["compile-a"]["exit_code"], tasks["compile-a"]["duration"], tasks["compile-a"]["output_tail"]) == \
        ("done", "a1", 1, 0, 1.5, "ok\n")
    assert tasks["link"]["state"] == "queued" and tasks["link"]["exit_code"] is None
    listed = client.get("/api/v1/builds", headers=basic()).get_json()["builds"]
    assert [b["id"] for b in listed] == [build_id] and listed[0]["name"] == "hello" and listed[0]["total"] == 2


def test_submit_yaml_build(client, cluster):
    response = client.post("/api/v1/builds", data=YAML_BUILD, headers=basic(), content_type="application/yaml")
    assert response.status_code == 201
    shown = client.get(f"/api/v1/builds/{response.get_json()['id']}", headers=basic()).get_json()
    assert shown["name"] == "yamly" and [t["id"] for t in shown["tasks"]] == ["one", "two"]


def test_bad_build_files_are_refused_with_their_reason_and_nothing_stored(client, cluster):
    cases = [
        ("", "empty"),
        ("{not json", None),
        (json.dumps({"name": "x", "tasks": [{"id": "a", "cmd": "true", "deps": ["missing"]}]}), "missing"),
        (json.dumps({"name": "x", "tasks": [{"id": "a", "cmd": "true", "deps": ["b"]},
                                            {"id": "b", "cmd": "true", "deps": ["a"]}]}), "cycle"),
        (json.dumps({"name": "x", "tasks": [{"id": "a"}]}), "cmd"),
    ]
    for body, word in cases:
        response = client.post("/api/v1/builds", data=body, headers=basic(), content_type="application/json")
        assert response.status_code == 400, body
        error = response.get_json()["error"]
        assert error and (word is None or word in error.lower()), error
    assert stored_builds(cluster) == []


def test_build_over_one_mib_is_413(client, cluster):
    body = json.dumps({"name": "big", "tasks": [{"id": "a", "cmd": "x" * (1024 * 1024 + 10)}]})
    response = client.post("/api/v1/builds", data=body, headers=basic(), content_type="application/json")
    assert response.status_code == 413 and "error" in response.get_json()
    assert stored_builds(cluster) == []


def test_unknown_build_is_404(client):
    response = client.get("/api/v1/builds/b-nope", headers=basic())
    assert response.status_code == 404 and "b-nope" in response.get_json()["error"]


def test_settings_update_and_validation(client, cluster):
    cluster.register("b1", "backup", "p1")
    cluster.register("b9", "backup", "other-primary")
    ok = client.put("/api/v1/settings", json={"selected_backup": "b1", "max_cores_per_build": 8,
                                              "auto_subscribe": False}, headers=basic())
    assert ok.status_code == 200 and ok.get_json()["settings"]["selected_backup"] == "b1"
    stored = json.loads(cluster.etcd.get(cluster.keys.settings)[0])
    assert stored["selected_backup"] == "b1" and stored["max_cores_per_build"] == 8
    assert stored["auto_subscribe"] is False
    bad = [
        ({"selected_backup": "nosuch"}, "not a registered backup"),
        ({"selected_backup": "b9"}, "not a registered backup"),   # a backup of another primary
        ({"selected_backup": "p1"}, "not a registered backup"),   # a primary is no backup
        ({"max_cores_per_build": -1}, "max_cores_per_build"),
        ({"deselect_after": "soon"}, "deselect_after"),
        ({"colour": "red"}, "unknown setting"),
        ([1, 2], "JSON object"),
    ]
    for body, words in bad:
        response = client.put("/api/v1/settings", json=body, headers=basic())
        assert response.status_code == 400, body
        assert words in response.get_json()["error"], response.get_json()
    not_json = client.put("/api/v1/settings", data="{", headers=basic(), content_type="application/json")
    assert not_json.status_code == 400
    assert json.loads(cluster.etcd.get(cluster.keys.settings)[0]) == stored  # nothing changed
    none = client.put("/api/v1/settings", json={"selected_backup": None}, headers=basic())
    assert none.status_code == 200 and none.get_json()["settings"]["selected_backup"] is None


def test_keeping_a_selected_backup_that_is_down_is_allowed(client, cluster):
    cluster.etcd.put(cluster.keys.settings, encode({"selected_backup": "gone"}))
    response = client.put("/api/v1/settings", json={"selected_backup": "gone", "max_cores_per_build": 2},
                          headers=basic())
    assert response.status_code == 200


def test_users_api(client, cluster):
    created = client.post("/api/v1/users", json={"name": "carol", "role": "viewer", "password": "pw-carol-1"},
                          headers=basic())
    assert created.status_code == 201 and created.get_json() == {"name": "carol", "role": "viewer"}
    assert client.get("/api/v1/status", headers=basic("carol", "pw-carol-1")).status_code == 200
    names = [u["name"] for u in client.get("/api/v1/users", headers=basic()).get_json()["users"]]
    assert {"admin", "viewer", "carol"} <= set(names)
    for body in ({"name": "carol", "role": "viewer", "password": "pw-carol-2"},
                 {"name": "bad name", "role": "viewer", "password": "long-enough"},
                 {"name": "dave", "role": "root", "password": "long-enough"},
                 {"name": "dave", "role": "viewer", "password": "short"}):
        assert client.post("/api/v1/users", json=body, headers=basic()).status_code == 400, body


def test_agent_config_api(client, cluster):
    cluster.etcd.put(cluster.keys.agent("a1"), encode({"name": "a1", "cores": 2}))
    response = client.post("/api/v1/agents/a1", json={"disabled": True}, headers=basic())
    assert response.status_code == 200
    assert json.loads(cluster.etcd.get(cluster.keys.agent_settings("a1"))[0]) == {"disabled": True}
    status = client.get("/api/v1/status", headers=basic()).get_json()
    assert status["agents"][0]["state"] == "disabled"
    assert client.post("/api/v1/agents/a1", json={"subscribed": False}, headers=basic()).status_code == 200
    assert json.loads(cluster.etcd.get(cluster.keys.agent_settings("a1"))[0]) == \
        {"disabled": True, "subscribed": False}
    assert client.post("/api/v1/agents/a1", json={"disabled": "yes"}, headers=basic()).status_code == 400
    assert client.post("/api/v1/agents/a1", json={"colour": 1}, headers=basic()).status_code == 400
    assert client.post("/api/v1/agents/nobody", json={"disabled": True}, headers=basic()).status_code == 404


def test_events_api(client, cluster):
    for i in range(5):
        cluster.etcd.put(cluster.keys.event(f"{i:020d}-p1"), encode(
            {"type": "leader", "time": float(i), "coordinator": "p1", "epoch": i, "detail": f"e{i}"}))
    events = client.get("/api/v1/events?limit=3", headers=basic()).get_json()["events"]
    assert [e["detail"] for e in events] == ["e4", "e3", "e2"]


def test_switchover_by_the_leading_primary(client, cluster):
    cluster.register("b1", "backup", "p1")
    cluster.etcd.put(cluster.keys.settings, encode({"selected_backup": "b1"}))
    response = client.post("/api/v1/switchover", headers=basic())
    assert response.status_code == 202 and response.get_json() == {"target": "b1"}
    assert json.loads(cluster.etcd.get(cluster.keys.switchover)[0]) == {"target": "b1"}
    refused = client.post("/api/v1/switchover", json={"target": "nosuch"}, headers=basic())
    assert refused.status_code == 400 and "registered" in refused.get_json()["error"]
    assert client.post("/api/v1/switchover", json={"target": "p1"}, headers=basic()).status_code == 400


def test_switchover_by_a_leading_backup_hands_back(cluster):
    cluster.register("b1", "backup", "p1")
    cluster.take_leadership("b1", role="backup")
    cluster.write_state("b1", role="backup")
    app = cluster.app("b1", role="backup", primary="p1")
    client = app.test_client()
    response = client.post("/api/v1/switchover", headers=basic())
    assert response.status_code == 202 and response.get_json() == {"target": "p1"}
    # ...but everything else stays view only on a backup, leading or not.
    assert client.put("/api/v1/settings", json={"max_cores_per_build": 1}, headers=basic()).status_code == 403


def test_status_without_the_agent_list_for_the_overview_polls(client, cluster):
    for i in range(3):
        cluster.etcd.put(cluster.keys.agent(f"a{i}"), encode({"name": f"a{i}", "cores": 4}))
    cluster.etcd.put(cluster.keys.agent_settings("a2"), encode({"disabled": True}))
    cluster.etcd.put(cluster.keys.agent_settings("gone"), encode({"disabled": False}))
    cluster.etcd.put(cluster.keys.runtime, encode({"agents": {"a0": {"connected": True, "running": 3, "cores": 4}}}))
    status = client.get("/api/v1/status?agents=none", headers=basic()).get_json()
    assert status["agents"] is None
    assert status["agent_summary"] == {"total": 4, "offline": 1, "unsubscribed": 0, "disabled": 1, "idle": 1,
                                       "busy": 1, "cores": 12, "cores_busy": 3}
    assert len(client.get("/api/v1/status", headers=basic()).get_json()["agents"]) == 4


def test_etcd_down_is_a_503_with_a_sentence(cluster):
    from tests.harness.ports import free_port
    app = cluster.app("p1", BATON_ETCD=f"http://127.0.0.1:{free_port()}", BATON_ETCD_TIMEOUT=0.5)
    response = app.test_client().get("/api/v1/status", headers=basic())
    assert response.status_code == 503 and "etcd does not answer" in response.get_json()["error"]
    page = app.test_client().get("/login")
    assert page.status_code == 200  # the login form itself needs no etcd


def test_build_tasks_can_be_filtered_and_paged(client, cluster):
    spec = {"name": "many", "tasks": [{"id": f"t{i:02d}", "cmd": "true"} for i in range(12)]}
    build_id = client.post("/api/v1/builds", data=json.dumps(spec), headers=basic(),
                           content_type="application/json").get_json()["id"]
    for i in (1, 5, 7):
        cluster.etcd.put(cluster.keys.task(build_id, f"t{i:02d}"), encode({"state": "failed", "attempt": 1}))
    failed = client.get(f"/api/v1/builds/{build_id}?state=failed", headers=basic()).get_json()
    assert [t["id"] for t in failed["tasks"]] == ["t01", "t05", "t07"] and failed["matching"] == 3
    assert failed["total"] == 12 and failed["counts"] == {"queued": 9, "running": 0, "done": 0, "failed": 3}
    page = client.get(f"/api/v1/builds/{build_id}?limit=5&offset=10", headers=basic()).get_json()
    assert [t["id"] for t in page["tasks"]] == ["t10", "t11"] and page["matching"] == 12
    assert client.get(f"/api/v1/builds/{build_id}?limit=-1", headers=basic()).status_code == 400


def test_a_number_with_5001_digits_in_a_build_is_a_400_naming_the_field(client, cluster):
    huge = "9" * 5001
    bodies = [('{"name": "x", "tasks": [{"id": "a", "cmd": "true", "timeout": %s}]}' % huge, "application/json"),
              ("name: x\ntasks: [{id: a, cmd: 'true', timeout: %s}]\n" % huge, "application/yaml")]
    for body, ctype in bodies:
        response = client.post("/api/v1/builds", data=body, headers=basic(), content_type=ctype)
        assert response.status_code == 400, response.data[:300]
        error = response.get_json()["error"]
        assert "5001 digits" in error and "tasks[0].timeout" in error and len(error) < 300, error
    assert stored_builds(cluster) == []


def test_settings_refuse_nan_infinity_and_huge_numbers_and_status_stays_json(client, cluster):
    for body in ('{"failback_delay": NaN}', '{"deselect_after": Infinity}', '{"failback_delay": -Infinity}',
                 '{"max_cores_per_build": %s}' % ("9" * 5001)):
        response = client.put("/api/v1/settings", data=body, headers=basic(), content_type="application/json")
        assert response.status_code == 400, body
        error = response.get_json()["error"]
        assert "set_int_max_str_digits" not in error and len(error) < 200, error
    assert cluster.etcd.get(cluster.keys.settings)[0] is None  # nothing stored
    status = client.get("/api/v1/status", headers=basic())
    json.loads(status.data, parse_constant=lambda name: pytest.fail(f"{name} in /api/v1/status"))


def test_admin_changes_a_password_and_deletes_a_user(client, cluster):
    client.post("/api/v1/users", json={"name": "carol", "role": "viewer", "password": "pw-carol-1"}, headers=basic())
    changed = client.put("/api/v1/users/carol/password", json={"password": "pw-carol-2"}, headers=basic())
    assert changed.status_code == 200 and changed.get_json() == {"name": "carol"}
    assert client.get("/api/v1/status", headers=basic("carol", "pw-carol-1")).status_code == 401
    assert client.get("/api/v1/status", headers=basic("carol", "pw-carol-2")).status_code == 200
    assert client.put("/api/v1/users/carol/password", json={"password": "short"},
                      headers=basic()).status_code == 400
    assert client.put("/api/v1/users/nobody/password", json={"password": "long-enough"},
                      headers=basic()).status_code == 404
    deleted = client.delete("/api/v1/users/carol", headers=basic())
    assert deleted.status_code == 200 and deleted.get_json() == {"name": "carol", "deleted": True}
    assert "carol" not in [u["name"] for u in client.get("/api/v1/users", headers=basic()).get_json()["users"]]
    assert client.delete("/api/v1/users/carol", headers=basic()).status_code == 404


def test_the_last_admin_cannot_be_deleted(client, cluster):
    response = client.delete("/api/v1/users/admin", headers=basic())
    assert response.status_code == 400 and "last admin" in response.get_json()["error"]
    assert cluster.etcd.get(cluster.keys.user("admin"))[0] is not None


def test_a_viewer_changes_only_their_own_password(client, cluster):
    own = client.put("/api/v1/users/viewer/password", json={"password": "viewer-secret-2"},
                     headers=basic("viewer", VIEWER_PW))
    assert own.status_code == 200
    other = client.put("/api/v1/users/admin/password", json={"password": "taken-over-1"},
                       headers=basic("viewer", "viewer-secret-2"))
    assert other.status_code == 403
    assert client.delete("/api/v1/users/viewer", headers=basic("viewer", "viewer-secret-2")).status_code == 403
    assert client.get("/api/v1/status", headers=basic()).status_code == 200  # admin's password unchanged


def test_user_changes_are_refused_without_leadership(client, cluster):
    cluster.drop_leadership()
    assert client.put("/api/v1/users/viewer/password", json={"password": "viewer-secret-2"},
                      headers=basic()).status_code == 403
    assert client.delete("/api/v1/users/viewer", headers=basic()).status_code == 403
    assert cluster.etcd.get(cluster.keys.user("viewer"))[0] is not None
