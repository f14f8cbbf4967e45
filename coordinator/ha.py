"""The HA decision: one pure function from a snapshot of the cluster to one action.

Like Patroni's HA cycle, each cycle reads one immutable snapshot (see
coordinator.snapshot), decides from it alone, and says in one sentence what
it is doing. The daemon acts on the Decision and logs the sentence when it
changes; tests call `decide` with plain data.

Rules encoded here (DESIGN.md section 1, "Backup coordinators"):
- the primary campaigns whenever there is no leader (unless a planned
  switchover to a registered coordinator is in progress);
- a backup campaigns only if it is the selected backup and its primary is not
  registered, or if a switchover names it; other backups never take over;
- a leading backup hands back once its primary has been registered and ready
  for failback_delay (unless a switchover asked for the backup to lead);
- the leading primary keeps the selected backup's contact clock and deselects
  it after deselect_after seconds out of contact.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from cluster.settings import Settings

# Actions, in the words of the domain.
NONE = "none"
CAMPAIGN = "campaign"
LEAD = "lead"                  # we hold the leader key but are not acting: start the runtime
STEP_DOWN = "step_down"        # we act but the leader key is not ours: stop at once
HANDBACK = "handback"          # a leading backup gives the baton back to its primary
SWITCHOVER = "switchover"      # the leader resigns to the coordinator a switchover names
TOUCH_CONTACT = "touch_contact"  # record that the selected backup was seen (or start its clock)
DESELECT = "deselect"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A registered coordinator (coordinators/<name>, alive while its session is)."""

    name: str
    role: str
    primary: str
    ready: bool = True
    grpc: str = ""
    web: str = ""


@dataclasses.dataclass(frozen=True)
class Leader:
    name: str
    role: str
    epoch: int
    grpc: str = ""
    web: str = ""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What etcd said at one revision."""

    leader: Leader | None
    coordinators: Mapping[str, Peer]
    settings: Settings
    switchover: str | None = None
    contact: Mapping[str, float] = dataclasses.field(default_factory=dict)  # backup -> last seen (unix s)
    revision: int = 0
    settings_revision: int = 0  # mod revision of the settings key (0: never saved), for compare-and-set
    switchover_revision: int = 0  # mod revision of the switchover request (0: none)


@dataclasses.dataclass(frozen=True)
class Me:
    """What this coordinator knows about itself at the time of the cycle."""

    name: str
    role: str
    primary: str
    epoch: int | None = None   # the epoch we won, if we believe we lead
    acting: bool = False       # our runtime is dispatching
    now: float = 0.0           # wall clock (unix s), for the deselection clock
    primary_ready_for: float | None = None  # backups: seconds our primary has been seen ready
    failback_delay: float = 5.0
    contact_interval: float = 1.0


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str
    sentence: str
    target: str | None = None


def decide(s: Snapshot, me: Me) -> Decision:
    leader = s.leader
    i_lead = (leader is not None and leader.name == me.name
              and me.epoch is not None and leader.epoch == me.epoch)
    if me.acting and not i_lead:
        held = "gone" if leader is None else f"held by {leader.name} (epoch {leader.epoch})"
        return Decision(STEP_DOWN, f"stepping down: I am {me.name} and the leader key is {held}, "
                                   f"not mine (epoch {me.epoch})")
    if i_lead:
        return _decide_leading(s, me, leader)
    if leader is None:
        return _decide_no_leader(s, me)
    if leader.name == me.name:
        return Decision(NONE, f"no action. I am {me.name}; the leader key still names me from an earlier "
                              f"session (epoch {leader.epoch}); waiting for its lease to expire")
    return Decision(NONE, f"no action. I am {me.name}, {_role(me)}; {leader.name} leads (epoch {leader.epoch})")


def _decide_leading(s: Snapshot, me: Me, leader: Leader) -> Decision:
    if not me.acting:
        return Decision(LEAD, f"taking up leadership: I am {me.name}, holder of the leader key "
                              f"(epoch {leader.epoch})")
    target = s.switchover
    if target and target != me.name:
        peer = s.coordinators.get(target)
        if peer is not None and peer.ready:
            return Decision(SWITCHOVER, f"handing over to {target} as a switchover asked", target)
        # A switchover to a coordinator that is not there cannot complete; keep leading.
    if me.role == "backup":
        return _decide_backup_leading(s, me, leader)
    selected = s.settings.selected_backup
    if selected:
        last = s.contact.get(selected)
        if selected in s.coordinators:
            if last is None or me.now - last >= me.contact_interval:
                return Decision(TOUCH_CONTACT, f"the selected backup {selected} is registered; "
                                               f"recording contact", selected)
        elif last is None:
            return Decision(TOUCH_CONTACT, f"the selected backup {selected} has not been seen; "
                                           f"starting its absence clock", selected)
        elif me.now - last >= s.settings.deselect_after:
            return Decision(DESELECT, f"deselecting backup {selected}: out of contact for "
                                      f"{me.now - last:.0f} s (deselect_after {s.settings.deselect_after:.0f} s)",
                            selected)
    return Decision(NONE, f"no action. I am {me.name}, the leader with the lease (epoch {leader.epoch})")


def _decide_backup_leading(s: Snapshot, me: Me, leader: Leader) -> Decision:
    if s.switchover == me.name:
        return Decision(NONE, f"no action. I am {me.name}, the backup leading after a switchover "
                              f"(epoch {leader.epoch})")
    primary = s.coordinators.get(me.primary)
    if primary is not None and primary.ready and me.primary_ready_for is not None:
        if me.primary_ready_for >= me.failback_delay:
            return Decision(HANDBACK, f"handing back to {me.primary}: ready for "
                                      f"{me.primary_ready_for:.1f} s (failback_delay {me.failback_delay:g} s)",
                            me.primary)
        return Decision(NONE, f"no action. I am {me.name}, the backup leading (epoch {leader.epoch}); "
                              f"{me.primary} is back, handing back in "
                              f"{me.failback_delay - me.primary_ready_for:.1f} s")
    return Decision(NONE, f"no action. I am {me.name}, the backup leading while {me.primary} is "
                          f"unavailable (epoch {leader.epoch})")


def _decide_no_leader(s: Snapshot, me: Me) -> Decision:
    target = s.switchover
    if me.role == "primary":
        if target and target != me.name:
            peer = s.coordinators.get(target)
            if peer is not None and peer.ready:
                return Decision(NONE, f"no action. I am {me.name}; a switchover to {target} is in progress")
        return Decision(CAMPAIGN, f"campaigning: there is no leader and I am the primary {me.name}")
    if target == me.name:
        return Decision(CAMPAIGN, f"campaigning: a switchover asked for {me.name} to lead")
    if s.settings.selected_backup != me.name:
        return Decision(NONE, f"no action. I am {me.name}, a backup that is not selected; "
                              f"only the selected backup takes over")
    if me.primary in s.coordinators:
        return Decision(NONE, f"no action. I am {me.name}, the selected backup; there is no leader but "
                              f"{me.primary} is registered, so it will lead")
    return Decision(CAMPAIGN, f"campaigning: the primary {me.primary} is unavailable and I am "
                              f"the selected backup {me.name}")


def _role(me: Me) -> str:
    return "the primary" if me.role == "primary" else f"a backup of {me.primary}"
