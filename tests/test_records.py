"""cluster.records: one parser per stored record, used by every reader."""
from cluster.records import LeaderRecord


def test_a_leader_record_round_trips_with_its_epoch_and_lease():
    record = LeaderRecord(name="p1", role="primary", epoch=42, grpc="h:7000", web="https://h:8000", lease_id=7)
    assert LeaderRecord.parse(record.to_json(), 42, 7) == record


def test_a_missing_or_unusable_leader_value_is_no_leader(caplog):
    assert LeaderRecord.parse(None, 5) is None
    assert LeaderRecord.parse(b"not json", 5) is None
    assert LeaderRecord.parse(b'{"role": "primary"}', 5) is None
    assert LeaderRecord.parse(b'["p1"]', 5) is None
    assert "names no coordinator" in caplog.text


def test_a_leader_value_without_addresses_still_names_its_leader():
    record = LeaderRecord.parse(b'{"name": "p1"}', 9)
    assert (record.name, record.role, record.grpc, record.epoch) == ("p1", "", "", 9)
