"""The HA decision with plain data: who campaigns, hands back, deselects."""
import pytest

from coordinator import ha
from coordinator.ha import Leader, Me, Peer, Snapshot, decide
from cluster.settings import Settings

P1 = Peer("p1", "primary", "p1")
B1 = Peer("b1", "backup", "p1")
B2 = Peer("b2", "backup", "p1")


def snap(leader=None, peers=(P1, B1, B2), selected="b1", switchover=None, contact=None, deselect_after=60.0):
    return Snapshot(leader=leader, coordinators={p.name: p for p in peers},
                    settings=Settings(selected_backup=selected, deselect_after=deselect_after),
                    switchover=switchover, contact=contact or {})


def me(name, role="backup", **kw):
    return Me(name=name, role=role, primary="p1", **kw)


def test_primary_campaigns_when_there_is_no_leader():
    d = decide(snap(), me("p1", "primary"))
    assert d.action == ha.CAMPAIGN
    assert d.sentence == "campaigning: there is no leader and I am the primary p1"


def test_selected_backup_waits_while_primary_is_registered():
    d = decide(snap(), me("b1"))
    assert d.action == ha.NONE
    assert "p1 is registered" in d.sentence


def test_selected_backup_campaigns_when_primary_is_gone():
    d = decide(snap(peers=(B1, B2)), me("b1"))
    assert d.action == ha.CAMPAIGN


@pytest.mark.parametrize("selected", ["b1", None])
def test_unselected_backup_never_campaigns(selected):
    # Also when the selected backup is gone too.
    d = decide(snap(peers=(B2,), selected=selected), me("b2"))
    assert d.action == ha.NONE
    assert "not selected" in d.sentence


def test_backups_idle_while_someone_leads():
    d = decide(snap(leader=Leader("p1", "primary", 7)), me("b1"))
    assert (d.action, d.sentence) == (ha.NONE, "no action. I am b1, a backup of p1; p1 leads (epoch 7)")


def test_leader_that_lost_its_key_steps_down():
    d = decide(snap(leader=Leader("b1", "backup", 9)), me("p1", "primary", epoch=7, acting=True))
    assert d.action == ha.STEP_DOWN
    assert "held by b1 (epoch 9)" in d.sentence


def test_new_epoch_of_my_own_name_is_not_mine():
    d = decide(snap(leader=Leader("p1", "primary", 9)), me("p1", "primary", epoch=7, acting=True))
    assert d.action == ha.STEP_DOWN


def test_holder_not_acting_takes_up_leadership():
    d = decide(snap(leader=Leader("p1", "primary", 7)), me("p1", "primary", epoch=7))
    assert d.action == ha.LEAD


def test_leading_backup_hands_back_after_failback_delay():
    leader = Leader("b1", "backup", 9)
    waiting = decide(snap(leader=leader), me("b1", epoch=9, acting=True, primary_ready_for=2.0, failback_delay=5))
    assert waiting.action == ha.NONE and "handing back in 3.0 s" in waiting.sentence
    d = decide(snap(leader=leader), me("b1", epoch=9, acting=True, primary_ready_for=5.0, failback_delay=5))
    assert (d.action, d.target) == (ha.HANDBACK, "p1")


def test_leading_backup_keeps_leading_while_primary_is_away():
    d = decide(snap(leader=Leader("b1", "backup", 9), peers=(B1,)), me("b1", epoch=9, acting=True))
    assert d.action == ha.NONE and "while p1 is unavailable" in d.sentence


def test_planned_switchover_to_backup_is_not_handed_back():
    d = decide(snap(leader=Leader("b1", "backup", 9), switchover="b1"),
               me("b1", epoch=9, acting=True, primary_ready_for=100.0))
    assert d.action == ha.NONE


def test_switchover_makes_the_leader_resign_and_the_target_campaign():
    leader = Leader("p1", "primary", 7)
    d = decide(snap(leader=leader, switchover="b1"), me("p1", "primary", epoch=7, acting=True, now=10.0,
                                                      ))
    assert (d.action, d.target) == (ha.SWITCHOVER, "b1")
    assert decide(snap(switchover="b1"), me("p1", "primary")).action == ha.NONE
    assert decide(snap(switchover="b1"), me("b1")).action == ha.CAMPAIGN


def test_switchover_to_a_missing_coordinator_does_not_stop_the_primary():
    leader = Leader("p1", "primary", 7)
    d = decide(snap(leader=leader, switchover="b1", peers=(P1,), selected=None),
               me("p1", "primary", epoch=7, acting=True))
    assert d.action == ha.NONE
    assert decide(snap(switchover="b1", peers=(P1,)), me("p1", "primary")).action == ha.CAMPAIGN


def test_switchover_back_to_primary_is_immediate():
    d = decide(snap(leader=Leader("b1", "backup", 9), switchover="p1"),
               me("b1", epoch=9, acting=True, primary_ready_for=0.0))
    assert (d.action, d.target) == (ha.SWITCHOVER, "p1")


def test_leading_primary_records_contact_with_selected_backup():
    leader = Leader("p1", "primary", 7)
    d = decide(snap(leader=leader, contact={"b1": 99.5}), me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert d.action == ha.NONE
    d = decide(snap(leader=leader, contact={"b1": 98.0}), me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert (d.action, d.target) == (ha.TOUCH_CONTACT, "b1")


def test_absent_selected_backup_is_deselected_after_deselect_after():
    leader = Leader("p1", "primary", 7)
    peers = (P1, B2)
    start = decide(snap(leader=leader, peers=peers), me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert start.action == ha.TOUCH_CONTACT and "starting its absence clock" in start.sentence
    early = decide(snap(leader=leader, peers=peers, contact={"b1": 50.0}),
                   me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert early.action == ha.NONE
    d = decide(snap(leader=leader, peers=peers, contact={"b1": 40.0}),
               me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert (d.action, d.target) == (ha.DESELECT, "b1")
    assert d.sentence == "deselecting backup b1: out of contact for 60 s (deselect_after 60 s)"


def test_stale_leader_key_of_my_own_name_is_waited_out():
    d = decide(snap(leader=Leader("p1", "primary", 5)), me("p1", "primary"))
    assert d.action == ha.NONE and "earlier session" in d.sentence
