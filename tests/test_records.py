"""cluster.records: one parser per stored record, used by every reader."""
import pytest

from cluster.keys import decode, encode
from cluster.records import AgentRecord, CoordinatorRecord, EventRecord, LeaderRecord


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


def test_a_coordinator_record_round_trips_and_reads_what_the_daemon_writes():
    record = CoordinatorRecord(name="b1", role="backup", primary="p1", grpc="h:7001", web="h:8001",
                               version="1.2", ready=True, ready_since=1700000000.5, host="h")
    assert CoordinatorRecord.parse(record.to_json(), "b1") == record
    written = encode({"name": "b1", "role": "backup", "primary": "p1", "grpc": "h:7001", "web": None,
                      "version": "1.2", "ready": False, "host": "h"})
    parsed = CoordinatorRecord.parse(written, "b1")
    assert (parsed.role, parsed.primary, parsed.web, parsed.ready, parsed.ready_since) == (
        "backup", "p1", None, False, None)


def test_the_key_names_a_coordinator_or_agent_even_when_its_value_does_not():
    assert CoordinatorRecord.parse(b"{}", "p1") == CoordinatorRecord(name="p1")
    assert CoordinatorRecord.parse(b'{"name": "other"}', "p1").name == "p1"
    assert AgentRecord.parse(b'{"cores": 4}', "a1") == AgentRecord(name="a1", cores=4)


def test_an_agent_record_is_stored_as_the_presence_value_the_agent_always_wrote():
    record = AgentRecord(name="a1", host="h", cores=8, group="default", version="1.2",
                         coordinator="p1", epoch=42)
    assert record.to_json() == encode({"name": "a1", "host": "h", "cores": 8, "group": "default",
                                       "version": "1.2", "coordinator": "p1", "epoch": 42})
    assert AgentRecord.parse(record.to_json(), "a1") == record
    unlinked = AgentRecord(name="a1", cores=1)
    assert AgentRecord.parse(unlinked.to_json(), "a1") == unlinked
    helping = AgentRecord(name="a1", cores=1, helper="h:40001")
    assert AgentRecord.parse(helping.to_json(), "a1") == helping
    assert decode(unlinked.to_json())["coordinator"] is None


def test_an_event_record_round_trips():
    record = EventRecord(type="failover", time=1700000000.25, coordinator="b1", epoch=42, detail="p1 lost its lease")
    assert EventRecord.parse(record.to_json()) == record
    assert record.to_dict() == decode(record.to_json())
    assert EventRecord.parse(EventRecord(type="resign", time=1.0, coordinator="p1").to_json()).epoch is None


@pytest.mark.parametrize("parse", [lambda v: CoordinatorRecord.parse(v, "c1"), lambda v: AgentRecord.parse(v, "a1"),
                                   EventRecord.parse], ids=["coordinator", "agent", "event"])
def test_a_junk_value_is_a_missing_record_and_is_logged(parse, caplog):
    assert parse(None) is None
    for junk in (b"not json", b'["a list"]', b"42", b'"text"'):
        assert parse(junk) is None
    assert "treated as missing" in caplog.text


def test_a_value_of_the_wrong_types_is_junk_too():
    assert AgentRecord.parse(b'{"cores": "many"}', "a1") is None
    assert AgentRecord.parse(b'{"epoch": {"n": 1}}', "a1") is None
    assert CoordinatorRecord.parse(b'{"ready_since": "yesterday"}', "c1") is None
    assert EventRecord.parse(b'{"time": 1.0, "coordinator": "p1"}') is None       # no type
    assert EventRecord.parse(b'{"type": "leader", "coordinator": "p1"}') is None  # no time
