"""`baton build list` and `baton build cancel ID` against the real web app served over
HTTP (werkzeug's server in a thread) on a real etcd."""
from __future__ import annotations

import json
import threading

import pytest
from werkzeug.serving import make_server

from cli.api_client import ApiClient
from cli.main import main
from cluster.keys import encode
from tests.test_web_support import ADMIN_PW, app, cluster, clock  # noqa: F401 (fixtures)

BUILD = json.dumps({"name": "firmware", "tasks": [{"id": "a", "cmd": "true"}, {"id": "b", "cmd": "true"}]})


@pytest.fixture
def url(app, monkeypatch):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BATON_USER", "admin")
    monkeypatch.setenv("BATON_PASSWORD", ADMIN_PW)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_list_shows_a_table_and_json(url, cluster, capsys):
    build_id = ApiClient(url).submit_build(BUILD.encode(), "b.json")["id"]
    status = {"state": "running", "total": 2, "done": 1, "failed": 0, "running": 1, "name": "firmware",
              "submitted": 1_800_000_000.0, "user": "admin"}
    cluster.etcd.put(cluster.keys.status_of_build(build_id), encode(status))
    code, out, err = run(capsys, "build", "list", "--url", url)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "DONE", "KIND", "SUBMITTED"]
    assert row.split()[:4] == [build_id, "firmware", "running", "1/2"]
    code, out, _ = run(capsys, "build", "list", "--json", "--url", url)
    assert code == 0 and [b["id"] for b in json.loads(out)] == [build_id]


def test_build_cancel_stores_the_request_and_refuses_an_ended_build(url, cluster, capsys):
    build_id = ApiClient(url).submit_build(BUILD.encode(), "b.json")["id"]
    code, out, err = run(capsys, "build", "cancel", build_id, "--url", url)
    assert code == 0, err
    assert out.startswith(f"{build_id}: cancel requested")
    assert json.loads(cluster.etcd.get(cluster.keys.cancel_of_build(build_id))[0])["user"] == "admin"
    cluster.etcd.put(cluster.keys.status_of_build(build_id), encode({"state": "cancelled"}))
    code, out, err = run(capsys, "build", "cancel", build_id, "--url", url)
    assert code == 1 and "409" in err and "already ended (cancelled)" in err
    code, _, err = run(capsys, "build", "cancel", "b-nosuch", "--url", url)
    assert code == 1 and "no build b-nosuch" in err
