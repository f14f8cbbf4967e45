"""A `baton run` build in the API and the UI (web/run_view.py, the build monitor page),
read from a real etcd holding the records the leader writes (coordinator/runtime/run_records.py)."""
from __future__ import annotations

from cli.run_report import job_report
from cluster.keys import encode
from cluster.records import JobRecord
from tests.test_web_support import app, basic, client, clock, cluster, login  # noqa: F401 (fixtures)

SPEC = {"id": "r1", "kind": "run", "name": "make -j4", "command": ["make", "-j4"], "host": "builder",
        "submitted": 1000.0, "user": None}
STATUS = {"kind": "run", "state": "running", "name": "make -j4", "host": "builder", "submitted": 1000.0,
          "started": 1000.0, "finished": None, "total": 2, "done": 1, "failed": 1, "running": 0, "remote": 1,
          "local": 1, "exit_code": None, "wall": None, "reason": ""}


def store(cluster, jobs=2):
    etcd, keys = cluster.etcd, cluster.keys
    etcd.put(keys.build("r1"), encode(SPEC))
    etcd.put(keys.status_of_build("r1"), encode(STATUS))
    for seq in range(1, jobs + 1):
        remote = seq % 2 == 1
        job = {"source": f"/src/s{seq}.c", "helper": "a1" if remote else "local", "core": 0,
               "started": 1000.0 + seq, "finished": 1001.5 + seq, "exit_code": 0 if remote else 1,
               "why_local": "" if remote else "no leader"}
        etcd.put(keys.job("r1", seq), JobRecord.from_report(job_report(seq, job), 7, "p1").to_json())
    etcd.put(keys.event("%020d-p1" % int(1001.2e9)), encode(
        {"type": "failover", "time": 1001.2, "coordinator": "b1", "epoch": 9, "detail": "p1 is gone"}))


def test_the_api_serves_a_run_build_with_its_jobs_and_the_events_of_its_span(client, cluster):
    store(cluster)
    build = client.get("/api/v1/builds/r1", headers=basic()).get_json()
    assert (build["kind"], build["state"], build["host"], build["command"]) == \
        ("run", "running", "builder", ["make", "-j4"])
    assert [(j["seq"], j["helper"], j["core"], j["remote"], j["exit_code"], j["duration"]) for j in build["jobs"]] == \
        [(1, "a1", 0, True, 0, 1.5), (2, "local", None, False, 1, 1.5)]
    assert build["jobs"][1]["why_local"] == "no leader" and build["counts"]["failed"] == 1
    assert [(e["type"], e["coordinator"]) for e in build["events"]] == [("failover", "b1")]
    later = client.get("/api/v1/builds/r1?since=1", headers=basic()).get_json()
    assert [j["seq"] for j in later["jobs"]] == [2]
    listed = client.get("/api/v1/builds", headers=basic()).get_json()["builds"]
    assert [(b["id"], b["kind"], b["total"], b["host"]) for b in listed] == [("r1", "run", 2, "builder")]


def test_a_run_build_is_not_cancelled_through_the_api(client, cluster):
    store(cluster)
    response = client.post("/api/v1/builds/r1/cancel", json={}, headers=basic())
    assert response.status_code == 400 and "baton run" in response.get_json()["error"]
    assert cluster.etcd.get(cluster.keys.cancel_of_build("r1"))[0] is None


def test_the_build_page_of_a_run_build_is_the_monitor(client, cluster):
    store(cluster)
    login(client)
    page = client.get("/builds/r1").get_data(as_text=True)
    assert 'id="monitor"' in page and 'data-run-build="r1"' in page and "/static/monitor.js" in page
    assert "<script>" not in page   # the monitor is a static script: no inline code
    assert "s1.c" in page and "no leader" in page
    assert 'id="cancel-build"' not in page
