"""The HA decision with plain data: who campaigns, hands back, deselects."""
import dataclasses

import pytest

from coordinator import ha
from cluster.records import LeaderRecord
from coordinator.ha import Me, Peer, Snapshot, decide
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
    d = decide(snap(leader=LeaderRecord("p1", "primary", 7)), me("b1"))
    assert (d.action, d.sentence) == (ha.NONE, "no action. I am b1, a backup of p1; p1 leads (epoch 7)")


def test_leader_that_lost_its_key_steps_down():
    d = decide(snap(leader=LeaderRecord("b1", "backup", 9)), me("p1", "primary", epoch=7, acting=True))
    assert d.action == ha.STEP_DOWN
    assert "held by b1 (epoch 9)" in d.sentence


def test_new_epoch_of_my_own_name_is_not_mine():
    d = decide(snap(leader=LeaderRecord("p1", "primary", 9)), me("p1", "primary", epoch=7, acting=True))
    assert d.action == ha.STEP_DOWN


def test_holder_not_acting_takes_up_leadership():
    d = decide(snap(leader=LeaderRecord("p1", "primary", 7)), me("p1", "primary", epoch=7))
    assert d.action == ha.LEAD


def test_leading_backup_hands_back_after_failback_delay():
    leader = LeaderRecord("b1", "backup", 9)
    waiting = decide(snap(leader=leader), me("b1", epoch=9, acting=True, primary_ready_for=2.0, failback_delay=5))
    assert waiting.action == ha.NONE and "handing back in 3.0 s" in waiting.sentence
    d = decide(snap(leader=leader), me("b1", epoch=9, acting=True, primary_ready_for=5.0, failback_delay=5))
    assert (d.action, d.target) == (ha.HANDBACK, "p1")


def test_leading_backup_keeps_leading_while_primary_is_away():
    d = decide(snap(leader=LeaderRecord("b1", "backup", 9), peers=(B1,)), me("b1", epoch=9, acting=True))
    assert d.action == ha.NONE and "while p1 is unavailable" in d.sentence


def test_planned_switchover_to_backup_is_not_handed_back():
    d = decide(snap(leader=LeaderRecord("b1", "backup", 9), switchover="b1"),
               me("b1", epoch=9, acting=True, primary_ready_for=100.0))
    assert d.action == ha.NONE


def test_switchover_makes_the_leader_resign_and_the_target_campaign():
    leader = LeaderRecord("p1", "primary", 7)
    d = decide(snap(leader=leader, switchover="b1"), me("p1", "primary", epoch=7, acting=True, now=10.0,
                                                      ))
    assert (d.action, d.target) == (ha.SWITCHOVER, "b1")
    assert decide(snap(switchover="b1"), me("p1", "primary")).action == ha.NONE
    assert decide(snap(switchover="b1"), me("b1")).action == ha.CAMPAIGN


def test_switchover_to_a_missing_coordinator_does_not_stop_the_primary():
    leader = LeaderRecord("p1", "primary", 7)
    d = decide(snap(leader=leader, switchover="b1", peers=(P1,), selected=None),
               me("p1", "primary", epoch=7, acting=True))
    assert d.action == ha.NONE
    assert decide(snap(switchover="b1", peers=(P1,)), me("p1", "primary")).action == ha.CAMPAIGN


def test_switchover_back_to_primary_is_immediate():
    d = decide(snap(leader=LeaderRecord("b1", "backup", 9), switchover="p1"),
               me("b1", epoch=9, acting=True, primary_ready_for=0.0))
    assert (d.action, d.target) == (ha.SWITCHOVER, "p1")


def test_leading_primary_records_contact_with_selected_backup():
    leader = LeaderRecord("p1", "primary", 7)
    d = decide(snap(leader=leader, contact={"b1": 99.5}), me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert d.action == ha.NONE
    d = decide(snap(leader=leader, contact={"b1": 98.0}), me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert (d.action, d.target) == (ha.TOUCH_CONTACT, "b1")


def test_absent_selected_backup_is_deselected_after_deselect_after():
    leader = LeaderRecord("p1", "primary", 7)
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
    d = decide(snap(leader=LeaderRecord("p1", "primary", 5)), me("p1", "primary"))
    assert d.action == ha.NONE and "earlier session" in d.sentence


# -- what the Decision carries for the daemon, and the loop's other choices --

P1_AT = Peer("p1", "primary", "p1", grpc="p1:7000")
B1_AT = Peer("b1", "backup", "p1", grpc="b1:7000")


def test_successor_is_the_switchover_target_else_the_partner():
    peers = (P1_AT, B1_AT, B2)
    assert ha.successor(snap(peers=peers), me("p1", "primary")) == ("b1", "b1:7000")
    assert ha.successor(snap(peers=peers), me("b1")) == ("p1", "p1:7000")
    assert ha.successor(snap(peers=peers, switchover="p1"), me("p1", "primary")) == ("b1", "b1:7000")
    # A target that is not registered, or has no address, is no successor.
    assert ha.successor(snap(peers=(P1_AT, B2), switchover="b2"), me("p1", "primary")) is None
    assert ha.successor(snap(peers=(P1_AT,)), me("p1", "primary")) is None
    assert ha.successor(snap(peers=peers, selected=None), me("p1", "primary")) is None


def test_decision_carries_the_successor_and_keep_warm():
    d = decide(snap(leader=LeaderRecord("p1", "primary", 7), peers=(P1_AT, B1_AT, B2), contact={"b1": 100.0}),
               me("p1", "primary", epoch=7, acting=True, now=100.0))
    assert (d.action, d.successor, d.keep_warm) == (ha.NONE, ("b1", "b1:7000"), True)
    idle = decide(snap(leader=LeaderRecord("p1", "primary", 7)), me("b2"))
    assert (idle.successor, idle.keep_warm) == (None, False)


def test_only_who_may_lead_next_keeps_warm():
    assert ha.may_lead_next(snap(selected=None), me("p1", "primary"))
    assert ha.may_lead_next(snap(), me("b1"))
    assert not ha.may_lead_next(snap(), me("b2"))
    assert ha.may_lead_next(snap(switchover="b2"), me("b2"))


def test_takeover_is_named_by_how_the_baton_came():
    assert ha.takeover(snap(switchover="b1"), me("b1")) == ha.Takeover(
        "switchover", "b1 leads after a planned switchover")
    assert ha.takeover(snap(peers=(B1,)), me("b1")) == ha.Takeover(
        "failover", "b1 took over: the primary p1 is unavailable (its lease ended)")
    back = ha.takeover(snap(), me("p1", "primary", previous_leader=LeaderRecord("b1", "backup", 9)))
    assert back == ha.Takeover("handback", "p1 leads again; b1 handed back", ensure_admin=True)
    assert ha.takeover(snap(), me("p1", "primary")) == ha.Takeover("leader", "p1 leads", ensure_admin=True)
    assert ha.takeover(snap(), me("p1", "primary", previous_leader=LeaderRecord("p1", "primary", 3))).kind == "leader"


def test_takeover_clears_a_switchover_request_for_someone_else():
    t = ha.takeover(snap(switchover="b2"), me("p1", "primary"))
    assert (t.kind, t.clear_switchover) == ("leader", True)
    assert not ha.takeover(snap(switchover="b1"), me("b1")).clear_switchover


def test_campaign_and_lead_carry_the_takeover_handover_carries_its_record():
    d = decide(snap(peers=(B1, B2)), me("b1"))
    assert d.action == ha.CAMPAIGN and d.takeover.kind == "failover" and d.handover is None
    d = decide(snap(leader=LeaderRecord("p1", "primary", 7)), me("p1", "primary", epoch=7))
    assert d.action == ha.LEAD and d.takeover == ha.Takeover("leader", "p1 leads", ensure_admin=True)
    d = decide(snap(leader=LeaderRecord("b1", "backup", 9)),
               me("b1", epoch=9, acting=True, primary_ready_for=5.0, failback_delay=5))
    assert d.action == ha.HANDBACK and d.takeover is None
    assert d.handover == ha.Handover("handback", "handback", "b1 hands the baton to p1 (handback)")
    d = decide(snap(leader=LeaderRecord("p1", "primary", 7), switchover="b1"),
               me("p1", "primary", epoch=7, acting=True))
    assert d.handover == ha.Handover("switchover", "resign", "p1 hands the baton to b1 (switchover)")


def test_contact_interval_follows_deselect_after():
    assert ha.contact_interval(Settings(deselect_after=3600)) == 1.0
    assert ha.contact_interval(Settings(deselect_after=5)) == 0.5


def test_failback_delay_setting_overrides_the_flag():
    assert ha.failback_delay(Settings(), 1.5) == 1.5
    assert ha.failback_delay(Settings(failback_delay=0.0), 1.5) == 0.0


def test_primary_ready_clock_starts_when_it_is_ready_and_resets_when_not():
    not_ready = Peer("p1", "primary", "p1", ready=False)
    assert ha.primary_ready_since(snap(), me("b1"), None, 10.0) == 10.0
    assert ha.primary_ready_since(snap(), me("b1"), 10.0, 12.0) == 10.0
    assert ha.primary_ready_since(snap(peers=(not_ready, B1)), me("b1"), 10.0, 13.0) is None
    assert ha.primary_ready_since(snap(peers=(B1,)), me("b1"), 10.0, 13.0) is None
    assert ha.primary_ready_since(snap(), me("p1", "primary"), None, 10.0) is None


def test_newest_switchover_sighting_wins():
    old, new = ha.SwitchoverSeen("b1", 5, 6), ha.SwitchoverSeen(None, 0, 8)
    assert new.newest(old) == new and old.newest(new) == new and old.newest(None) == old
    assert ha.SwitchoverSeen(None, 0, 6).newest(old) == ha.SwitchoverSeen(None, 0, 6)  # a tie: the later call


def test_planned_handover_campaigns_at_once_only_where_the_rules_would():
    asked = ha.SwitchoverSeen("b1", 41, 42)
    none = ha.SwitchoverSeen(None, 0, 42)
    assert ha.campaign_at_once(asked, me("b1"), ready=True, session_lost=False) == 41
    assert ha.campaign_at_once(none, me("p1", "primary"), ready=True, session_lost=False) == 0
    assert ha.campaign_at_once(asked, me("p1", "primary"), ready=True, session_lost=False) is None
    assert ha.campaign_at_once(none, me("b1"), ready=True, session_lost=False) is None
    assert ha.campaign_at_once(None, me("p1", "primary"), ready=True, session_lost=False) is None


@pytest.mark.parametrize("kw", [dict(ready=False), dict(session_lost=True), dict(epoch=7), dict(acting=True)])
def test_no_campaign_at_once_when_not_ready_lost_or_leading(kw):
    ready, lost = kw.pop("ready", True), kw.pop("session_lost", False)
    assert ha.campaign_at_once(ha.SwitchoverSeen("b1", 41, 42), me("b1", **kw),
                               ready=ready, session_lost=lost) is None


# -- crash detection: revoke the lease of a leader whose process is gone ------

P1_LEADS = LeaderRecord("p1", "primary", 7, grpc="p1:7000", lease_id=0x71)
B1_LEADS = LeaderRecord("b1", "backup", 9, grpc="b1:7000", lease_id=0x91)


def gone(leader, **kw):
    """The probe's sighting of `leader`: its connection broke and a fresh connect was refused."""
    return ha.ProbeResult(leader.epoch, leader.lease_id, leader.grpc, broken=True, refused=True,
                          detail=f"connection refused at {leader.grpc}", **kw)


def crash_snap(leader, crash_detection=True, **kw):
    s = snap(leader=leader, peers=(P1_AT, B1_AT, B2), **kw)
    return Snapshot(leader=s.leader, coordinators=s.coordinators, switchover=s.switchover,
                    settings=Settings(selected_backup="b1", crash_detection=crash_detection))


def test_selected_backup_revokes_the_lease_of_a_primary_whose_process_is_gone():
    d = decide(crash_snap(P1_LEADS), me("b1", probe=gone(P1_LEADS)))
    assert d.action == ha.REVOKE and d.target == "p1"
    assert d.revocation == ha.Revocation(
        0x71, 7, "p1's process is gone: connection refused at p1:7000; lease revoked")
    assert "revoking the lease of p1 (epoch 7)" in d.sentence


def test_primary_revokes_the_lease_of_a_leading_backup_whose_process_is_gone():
    d = decide(crash_snap(B1_LEADS), me("p1", "primary", probe=gone(B1_LEADS)))
    assert d.action == ha.REVOKE and d.revocation.lease_id == 0x91


def test_only_who_would_lead_next_probes():
    assert ha.probe_target(crash_snap(P1_LEADS), me("b1")) == P1_LEADS
    assert ha.probe_target(crash_snap(B1_LEADS), me("p1", "primary")) == B1_LEADS
    assert ha.probe_target(crash_snap(P1_LEADS), me("b2")) is None, "a backup that is not selected"
    assert ha.probe_target(crash_snap(P1_LEADS), me("p1", "primary")) is None, "the leader itself"
    assert ha.probe_target(crash_snap(B1_LEADS), me("b2")) is None, "p1 would lead next, not b2"
    # A switchover in progress to b2: b2 would campaign too.
    assert ha.probe_target(crash_snap(P1_LEADS, switchover="b2"), me("b2")) == P1_LEADS
    no_address = LeaderRecord("p1", "primary", 7, lease_id=0x71)
    assert ha.probe_target(crash_snap(no_address), me("b1")) is None
    assert ha.probe_target(crash_snap(LeaderRecord("p1", "primary", 7, grpc="p1:7000")), me("b1")) is None


def test_a_backup_that_is_not_selected_never_revokes():
    d = decide(crash_snap(P1_LEADS), me("b2", probe=gone(P1_LEADS)))
    assert d.action == ha.NONE


def test_a_refused_connect_without_a_broken_connection_is_no_evidence():
    # E.g. a leader advertising an address that is not its own from here: we never
    # held a connection to it, so a refusal says nothing about its process.
    probe = dataclasses.replace(gone(P1_LEADS), broken=False)
    assert decide(crash_snap(P1_LEADS), me("b1", probe=probe)).action == ha.NONE


def test_a_timeout_is_no_evidence_the_lease_decides():
    # A paused or busy leader still accepts (the kernel does), and a host cut off
    # by the network times out: neither is refused.
    probe = dataclasses.replace(gone(P1_LEADS), refused=False, detail="connect to p1:7000 timed out")
    assert decide(crash_snap(P1_LEADS), me("b1", probe=probe)).action == ha.NONE


def test_crash_detection_off_leaves_it_to_the_lease():
    s = crash_snap(P1_LEADS, crash_detection=False)
    assert ha.probe_target(s, me("b1")) is None
    assert decide(s, me("b1", probe=gone(P1_LEADS))).action == ha.NONE


def test_a_sighting_of_an_earlier_session_revokes_nothing_of_the_new_one():
    # p1 died and came back as a new process: a new session, a new lease, a new epoch.
    # What the probe saw of the old one says nothing of the new one.
    old = gone(LeaderRecord("p1", "primary", 5, grpc="p1:7000", lease_id=0x55))
    assert decide(crash_snap(P1_LEADS), me("b1", probe=old)).action == ha.NONE
    other_lease = dataclasses.replace(gone(P1_LEADS), lease_id=0x55)
    assert decide(crash_snap(P1_LEADS), me("b1", probe=other_lease)).action == ha.NONE
    moved = dataclasses.replace(gone(P1_LEADS), address="p1:7001")
    assert decide(crash_snap(P1_LEADS), me("b1", probe=moved)).action == ha.NONE


def test_a_takeover_after_a_revocation_says_why():
    why = "p1's process is gone: connection refused at p1:7000; lease revoked"
    assert ha.takeover(snap(peers=(B1,)), me("b1", revoked=why)) == ha.Takeover(
        "failover", f"b1 took over: {why}")
    back = ha.takeover(snap(), me("p1", "primary", previous_leader=B1_LEADS,
                                  revoked="b1's process is gone: connection refused at b1:7000; lease revoked"))
    assert (back.kind, back.detail) == (
        "leader", "p1 leads: b1's process is gone: connection refused at b1:7000; lease revoked")
