"""A new leader reads its starting point without the history of finished builds."""
from cluster.keys import encode
from coordinator.runtime.loading import read_snapshot, read_starting_point


def test_starting_point_skips_finished_builds_history(etcd, keys):
    spec = {"id": "old", "name": "old", "tasks": [{"id": f"t{i}", "cmd": "true", "deps": []} for i in range(50)]}
    etcd.put(keys.build("old"), encode(spec))
    etcd.put(keys.status_of_build("old"), encode({"state": "done"}))
    for i in range(50):
        etcd.put(keys.task("old", f"t{i}"), encode({"state": "done", "attempt": 1}))
    etcd.put(keys.build("new"), encode(dict(spec, id="new", name="new")))
    etcd.put(keys.task("new", "t0"), encode({"state": "running", "attempt": 1, "agent": "a1"}))
    etcd.put(keys.agent("a1"), encode({"name": "a1", "cores": 2}))
    etcd.put(keys.settings, encode({"max_cores_per_build": 3}))
    etcd.put(keys.cancel_of_build("new"), encode({"user": "admin", "time": 1}))
    etcd.put(keys.cancel_of_build("old"), encode({"user": "admin", "time": 1}))   # came too late

    kvs, revision = read_starting_point(etcd, keys)
    assert not any(k.startswith(keys.build_tasks("old")) for k in kvs), "finished build's tasks were read"
    assert kvs[keys.build("old")].value == b"", "a finished build's spec was read"
    assert revision >= max(kv.mod_revision for kv in kvs.values())

    snap = read_snapshot(kvs, keys)
    assert snap.finished == {"old"}
    assert [b.spec["id"] for b in snap.unfinished] == ["new"]
    assert snap.unfinished[0].records == {"t0": {"state": "running", "attempt": 1, "agent": "a1"}}
    assert set(snap.agents) == {"a1"} and snap.settings.max_cores_per_build == 3
    assert snap.cancels == {"new"}, "a new leader finishes the cancellations of unfinished builds"



def test_a_key_that_is_not_json_does_not_stop_a_takeover(etcd, keys):
    etcd.put(keys.build("bad"), b"{not json")
    etcd.put(keys.build("good"), encode({"id": "good", "name": "good", "tasks": [{"id": "t0", "cmd": "true"}]}))
    etcd.put(keys.task("good", "t0"), b"garbage")
    snap = read_snapshot(read_starting_point(etcd, keys)[0], keys)
    assert [b.spec for b in snap.unfinished][0] is None  # the dispatcher logs and skips a spec it cannot read
    assert snap.unfinished[1].spec["id"] == "good" and snap.unfinished[1].records == {"t0": None}
