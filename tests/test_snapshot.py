"""The HA snapshot is read from a real etcd in one transaction."""
from cluster.keys import encode
from cluster.settings import Settings
from coordinator.snapshot import read_snapshot


def test_empty_cluster(etcd, keys):
    s = read_snapshot(etcd, keys)
    assert s.leader is None and s.coordinators == {} and s.settings == Settings()
    assert s.switchover is None and s.contact == {}


def test_snapshot_reads_every_part(etcd, keys):
    etcd.put(keys.coordinator("p1"), encode({"role": "primary", "primary": "p1", "ready": True}))
    etcd.put(keys.coordinator("b1"), encode({"role": "backup", "primary": "p1", "ready": False}))
    etcd.put(keys.leader, encode({"name": "p1", "role": "primary", "grpc": "h:1", "web": "h:2"}))
    etcd.put(keys.settings, Settings(selected_backup="b1", deselect_after=5).to_json())
    etcd.put(keys.switchover, encode({"target": "b1"}))
    etcd.put(keys.contact("b1"), encode({"last_seen": 12.5}))
    s = read_snapshot(etcd, keys)
    _, meta = etcd.get(keys.leader)
    assert s.leader.name == "p1" and s.leader.epoch == meta.create_revision and s.leader.grpc == "h:1"
    assert set(s.coordinators) == {"p1", "b1"}
    assert s.coordinators["p1"].ready and not s.coordinators["b1"].ready
    assert s.coordinators["b1"].primary == "p1"
    assert s.settings.selected_backup == "b1" and s.settings.deselect_after == 5
    assert s.switchover == "b1" and s.contact == {"b1": 12.5}
