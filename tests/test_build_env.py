"""The build file's env is stored with the build and is what the dispatcher sends.

web/actions.py stored only id, cmd, deps and timeout: a build's `env` never
reached its tasks. The Assignment carries Task.env (coordinator/runtime/results.py;
tests/test_runtime.py checks that part).
"""
from __future__ import annotations

import json

from coordinator.runtime.state import Build
from tests.test_web_support import app, basic, client, clock, cluster  # noqa: F401 (fixtures)

BUILD = {"name": "envy", "env": {"CC": "gcc", "MODE": "release"},
         "tasks": [{"id": "a", "cmd": "echo $CC", "env": {"CC": "clang"}}, {"id": "b", "cmd": "echo $MODE"}]}


def test_the_build_files_env_is_stored_and_given_to_each_task(client, cluster):
    response = client.post("/api/v1/builds", data=json.dumps(BUILD), headers=basic(),
                           content_type="application/json")
    assert response.status_code == 201, response.get_json()
    build_id = response.get_json()["id"]
    stored = json.loads(cluster.etcd.get(cluster.keys.build(build_id))[0])
    build, _ = Build.from_spec(stored, 1, {}, 0.0, 0.0)
    assert build.tasks["a"].env == {"CC": "clang", "MODE": "release"}
    assert build.tasks["b"].env == {"CC": "gcc", "MODE": "release"}
