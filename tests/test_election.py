"""Election against a real etcd: campaign, epoch, fencing, observe."""
from __future__ import annotations

import threading

import pytest

from lease.election import Election, Fence, LeaderInfo, TxnConflict
from lease.errors import LeaseLost, NotLeader
from lease.session import Session
from tests.harness.wait import wait_until

TTL = 2


@pytest.fixture
def sessions(etcd):
    made = []

    def make() -> Session:
        s = Session(etcd, ttl=TTL, healthy=lambda: True).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def leader_key(keys):
    return keys.leader


def test_campaign_wins_only_when_there_is_no_leader(etcd, sessions, leader_key):
    a = Election(etcd, leader_key, sessions())
    b = Election(etcd, leader_key, sessions())
    assert a.campaign("a") is True
    assert b.campaign("b") is False
    assert a.is_leader and not b.is_leader and b.epoch is None
    info = b.leader()
    assert info == LeaderInfo(b"a", a.epoch, a.session.lease_id)
    # The epoch is the leader key's create revision.
    _, meta = etcd.get(leader_key)
    assert meta.create_revision == a.epoch and meta.lease_id == a.session.lease_id
    # Campaigning again with our own lease is idempotent; the epoch does not move.
    epoch = a.epoch
    assert a.campaign("a") is True and a.epoch == epoch

    a.resign()
    assert a.epoch is None and etcd.get(leader_key)[0] is None
    assert b.campaign("b") is True
    assert b.epoch > epoch
    a.resign()  # not leader: no-op, and b is untouched
    assert b.leader().value == b"b"


def test_fence_commits_only_for_the_current_epoch(etcd, sessions, leader_key, keys):
    data = keys.root + "data"
    a = Election(etcd, leader_key, sessions())
    assert a.campaign("a")
    old_epoch = a.epoch
    fence = a.fence()
    assert fence == Fence(etcd, leader_key, old_epoch)
    fence.commit([etcd.ops.put(data, "from a")])
    assert etcd.get(data)[0] == b"from a"

    # A failing extra comparison while we still lead is a conflict, not a lost leadership.
    with pytest.raises(TxnConflict):
        fence.commit([etcd.ops.put(data, "x")], also=[etcd.ops.value(data) == "other"])
    assert a.is_leader and etcd.get(data)[0] == b"from a"
    # A holding extra comparison lets the write through.
    fence.commit([etcd.ops.put(data, "from a, checked")], also=[etcd.ops.value(data) == "from a"])
    assert etcd.get(data)[0] == b"from a, checked"

    # a's key goes (as when its lease expires) and b wins: a's old epoch is now worthless.
    etcd.delete(leader_key)
    b = Election(etcd, leader_key, sessions())
    assert b.campaign("b")
    with pytest.raises(NotLeader, match=f"epoch {old_epoch} is over"):
        Fence(etcd, leader_key, old_epoch).commit([etcd.ops.put(data, "stale write")])
    # Also when only an extra comparison would have failed: the lost fence wins.
    with pytest.raises(NotLeader):
        fence.commit([etcd.ops.put(data, "x")], also=[etcd.ops.value(data) == "other"])
    with pytest.raises(NotLeader):
        a.proclaim("still me?")
    assert not a.is_leader
    with pytest.raises(NotLeader):
        a.fence()
    assert etcd.get(data)[0] == b"from a, checked"
    assert b.leader().value == b"b"
    with pytest.raises(NotLeader):
        Fence(etcd, leader_key, None)


def test_fence_of_a_resigned_leader_cannot_write(etcd, sessions, leader_key, keys):
    data = keys.root + "data"
    a = Election(etcd, leader_key, sessions())
    assert a.campaign("a")
    fence = a.fence()
    a.resign()
    # Nobody leads: the fence is lost even though no one else holds the key.
    with pytest.raises(NotLeader, match="now nobody"):
        fence.commit([etcd.ops.put(data, "after resign")])
    b = Election(etcd, leader_key, sessions())
    assert b.campaign("b")
    with pytest.raises(NotLeader, match=f"now epoch {b.epoch}"):
        fence.commit([etcd.ops.put(data, "after resign")])
    # The same session campaigning again gets a new epoch; the old fence stays lost.
    b.resign()
    assert a.campaign("a again") and a.epoch != fence.epoch
    with pytest.raises(NotLeader):
        fence.commit([etcd.ops.put(data, "after resign")])
    assert etcd.get(data)[0] is None
    a.fence().commit([etcd.ops.put(data, "new epoch")])
    assert etcd.get(data)[0] == b"new epoch"


def test_proclaim_changes_the_value_but_not_the_epoch(etcd, sessions, leader_key):
    a = Election(etcd, leader_key, sessions())
    assert a.campaign("v1")
    epoch = a.epoch
    a.proclaim("v2")
    assert a.leader() == LeaderInfo(b"v2", epoch, a.session.lease_id)


def test_observe_reports_now_and_every_change_including_deletion(etcd, sessions, leader_key):
    seen: list[LeaderInfo | None] = []
    lock = threading.Lock()

    def record(info):
        with lock:
            seen.append(info)

    a = Election(etcd, leader_key, sessions())
    watcher = a.observe(record)
    try:
        assert seen == [None]  # at once, before observe returned
        assert a.campaign("a")
        a.proclaim("a2")
        a.resign()
        b = Election(etcd, leader_key, sessions())
        assert b.campaign("b")
        wait_until(lambda: len(seen) >= 5, timeout=5, message="five observations")
        assert seen == [None, LeaderInfo(b"a", a_epoch := seen[1].epoch, a.session.lease_id),
                        LeaderInfo(b"a2", a_epoch, a.session.lease_id), None,
                        LeaderInfo(b"b", b.epoch, b.session.lease_id)]
    finally:
        watcher.stop()


def test_lost_session_cannot_campaign(etcd, sessions, leader_key):
    s = sessions()
    s.close()
    with pytest.raises(LeaseLost, match="session lost"):
        Election(etcd, leader_key, s).campaign("x")


def test_waiting_campaigner_takes_over_when_the_leader_resigns(etcd, sessions, leader_key):
    a = Election(etcd, leader_key, sessions())
    b = Election(etcd, leader_key, sessions())
    assert a.campaign("a")
    stop = threading.Event()
    won = []
    t = threading.Thread(target=lambda: won.append(b.wait_for_vacancy_and_campaign("b", stop, poll=5)))
    t.start()
    try:
        a.resign()
        t.join(5)
        assert won == [True] and b.leader().value == b"b"
    finally:
        stop.set()
        t.join(5)


def test_resign_commits_its_last_ops_with_the_delete_and_only_while_leading(etcd, sessions, leader_key, keys):
    note = keys.root + "handover-note"
    a = Election(etcd, leader_key, sessions())
    assert a.campaign("a")
    a.resign(last_ops=[etcd.ops.put(note, b"a handed over")])
    value, note_meta = etcd.get(note)
    assert value == b"a handed over" and etcd.get(leader_key)[0] is None
    assert note_meta.mod_revision == etcd.revision()  # the delete and the note: one transaction

    b = Election(etcd, leader_key, sessions())
    assert a.campaign("a")
    stale_epoch = a.epoch
    a.session.close()  # the key goes with the lease; b leads
    wait_until(lambda: b.campaign("b"), 10, message="b to lead")
    a._epoch = stale_epoch  # a still believes it leads
    a.resign(last_ops=[etcd.ops.put(note, b"stale")])
    assert etcd.get(note)[0] == b"a handed over" and b.leader().value == b"b"


def test_a_guarded_campaign_wins_only_while_its_condition_holds(etcd, sessions, leader_key, keys):
    # The daemon's campaign at a planned handover's resignation: "only while the
    # switchover request still names me", checked in the campaign's transaction.
    request = keys.root + "switchover-request"
    etcd.put(request, b'{"target": "b"}')
    _, meta = etcd.get(request)
    b = Election(etcd, leader_key, sessions())
    etcd.put(request, b'{"target": "c"}')  # changed after b saw it
    assert b.campaign("b", also=[etcd.ops.mod(request) == meta.mod_revision]) is False
    assert b.epoch is None and etcd.get(leader_key)[0] is None
    _, meta = etcd.get(request)
    assert b.campaign("b", also=[etcd.ops.mod(request) == meta.mod_revision]) is True
    assert b.leader().value == b"b"
