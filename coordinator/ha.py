"""The HA decision: one pure function from a snapshot of the cluster to one action.

Like Patroni's HA cycle, each cycle reads one immutable snapshot (see
coordinator.snapshot), decides from it alone, and says in one sentence what
it is doing. The daemon acts on the Decision and logs the sentence when it
changes; tests call `decide` with plain data.

Rules encoded here (docs/design.md section 1, "Backup coordinators"):
- the primary campaigns whenever there is no leader (unless a planned
  switchover to a registered coordinator is in progress);
- a backup campaigns only if it is the selected backup and its primary is not
  registered, or if a switchover names it; other backups never take over;
- a leading backup hands back once its primary has been registered and ready
  for failback_delay (unless a switchover asked for the backup to lead);
- the leading primary keeps the selected backup's contact clock and deselects
  it after deselect_after seconds out of contact;
- the coordinator that would lead next revokes the leader's lease when the
  leader's process is gone: its probe's connection to the leader broke and a
  fresh connect was refused (crash_detection; coordinator.leader_probe). A
  timeout is no evidence: a silent host is left to the lease.

The Decision also carries what the daemon needs to act without deciding:
whether to keep a takeover's starting point warm, the successor to announce
to the agents, and the records of a takeover or handover. The other choices of
the loop are pure functions here too (the early campaign of a planned
handover, how long our primary has been ready, the failback delay and the
contact interval in force). Time is always an argument, never read here.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from cluster.records import LeaderRecord
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
REVOKE = "revoke"              # the leader's process is gone: revoke its lease (not a state write)


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
class Snapshot:
    """What etcd said at one revision."""

    leader: LeaderRecord | None
    coordinators: Mapping[str, Peer]
    settings: Settings
    switchover: str | None = None
    contact: Mapping[str, float] = dataclasses.field(default_factory=dict)  # backup -> last seen (unix s)
    revision: int = 0
    settings_revision: int = 0  # mod revision of the settings key (0: never saved), for compare-and-set
    switchover_revision: int = 0  # mod revision of the switchover request (0: none)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What the probe (coordinator.leader_probe) saw of the leader it watched:
    the leader key's epoch and lease and the gRPC address it connected to."""

    leader_epoch: int
    lease_id: int
    address: str
    broken: bool = False   # the connection it held was closed or reset by the peer
    refused: bool = False  # and a fresh connect after the break was refused (ECONNREFUSED)
    detail: str = ""       # e.g. "connection refused at 10.0.0.1:7000"


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
    previous_leader: LeaderRecord | None = None  # who led before us (last seen), to name a takeover
    probe: ProbeResult | None = None  # what our probe saw of the leader (None: no evidence)
    revoked: str | None = None        # why we revoked previous_leader's lease, to name our takeover


@dataclasses.dataclass(frozen=True)
class Takeover:
    """What a coordinator records as it takes up leadership (one fenced transaction)."""

    kind: str                       # the event type: switchover, failover, handback or leader
    detail: str
    clear_switchover: bool = False  # a request naming another coordinator is stale: the baton is here now
    ensure_admin: bool = False      # the primary creates the first user when there is none


@dataclasses.dataclass(frozen=True)
class Handover:
    """What a leader records as it resigns to another coordinator."""

    reason: str   # handback or switchover
    event: str    # the event type: handback or resign
    detail: str


@dataclasses.dataclass(frozen=True)
class Revocation:
    """The lease a REVOKE decision revokes, of the leader holding `epoch`."""

    lease_id: int
    epoch: int
    why: str   # "p1's process is gone: connection refused at HOST:PORT; lease revoked"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str
    sentence: str
    target: str | None = None
    keep_warm: bool = False                  # keep a takeover's starting point warm (may_lead_next)
    successor: tuple[str, str] | None = None  # (name, gRPC address) announced to the agents
    takeover: Takeover | None = None         # for CAMPAIGN and LEAD: the records once we lead
    handover: Handover | None = None         # for HANDBACK and SWITCHOVER
    revocation: Revocation | None = None     # for REVOKE


def decide(s: Snapshot, me: Me) -> Decision:
    """The action of this cycle, with everything the daemon needs to carry it out."""
    d = _decide(s, me)
    return dataclasses.replace(
        d, keep_warm=may_lead_next(s, me), successor=successor(s, me),
        takeover=takeover(s, me) if d.action in (CAMPAIGN, LEAD) else None,
        handover=_handover(d, me) if d.action in (HANDBACK, SWITCHOVER) else None)


def _decide(s: Snapshot, me: Me) -> Decision:
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
    gone = _leader_gone(s, me, leader)
    if gone is not None:
        return gone
    return Decision(NONE, f"no action. I am {me.name}, {_role(me)}; {leader.name} leads (epoch {leader.epoch})")


def _decide_leading(s: Snapshot, me: Me, leader: LeaderRecord) -> Decision:
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
            # Recording contact is routine upkeep every contact_interval, not a change of
            # course: it says the same sentence as the cycles between, so that the log
            # (which logs a sentence when it changes) stays quiet while nothing changes.
            in_contact = (f"leading. I am {me.name}, the leader with the lease (epoch {leader.epoch}); "
                          f"the selected backup {selected} is in contact")
            if last is None or me.now - last >= me.contact_interval:
                return Decision(TOUCH_CONTACT, in_contact, selected)
            return Decision(NONE, in_contact)
        elif last is None:
            return Decision(TOUCH_CONTACT, f"the selected backup {selected} has not been seen; "
                                           f"starting its absence clock", selected)
        elif me.now - last >= s.settings.deselect_after:
            return Decision(DESELECT, f"deselecting backup {selected}: out of contact for "
                                      f"{me.now - last:.0f} s (deselect_after {s.settings.deselect_after:.0f} s)",
                            selected)
    return Decision(NONE, f"no action. I am {me.name}, the leader with the lease (epoch {leader.epoch})")


def _decide_backup_leading(s: Snapshot, me: Me, leader: LeaderRecord) -> Decision:
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


def _leader_gone(s: Snapshot, me: Me, leader: LeaderRecord) -> Decision | None:
    """REVOKE when our probe watched this very leader (epoch, lease and address
    of the snapshot's leader key: a leader restarted as a new session is a new
    target) and saw its connection break and a fresh connect refused."""
    p = me.probe
    if (p is None or not (p.broken and p.refused) or probe_target(s, me) is None
            or (p.leader_epoch, p.lease_id, p.address) != (leader.epoch, leader.lease_id, leader.grpc)):
        return None
    why = f"{leader.name}'s process is gone: {p.detail or f'connection refused at {p.address}'}; lease revoked"
    return Decision(REVOKE, f"revoking the lease of {leader.name} (epoch {leader.epoch}): its connection broke "
                            f"and {p.detail or 'a fresh connect was refused'}; I am {me.name} and lead next",
                    leader.name, revocation=Revocation(leader.lease_id, leader.epoch, why))


def probe_target(s: Snapshot, me: Me) -> LeaderRecord | None:
    """The leader whose process this coordinator watches (coordinator.leader_probe),
    or None. Only the one that would campaign were the leader's lease gone (its
    leader key and registration vanish with it) watches: the selected backup
    while its primary leads, the primary while a backup leads; never a backup
    that is not selected. Off with the crash_detection setting, and for a
    leader key without an address or a lease to revoke."""
    leader = s.leader
    if (not s.settings.crash_detection or leader is None or leader.name == me.name or me.acting
            or not leader.grpc or not leader.lease_id):
        return None
    rest = {name: peer for name, peer in s.coordinators.items() if name != leader.name}
    after = _decide_no_leader(dataclasses.replace(s, leader=None, coordinators=rest), me)
    return leader if after.action == CAMPAIGN else None


def _role(me: Me) -> str:
    return "the primary" if me.role == "primary" else f"a backup of {me.primary}"


# -- the loop's other choices, each a pure function -------------------------

def successor(s: Snapshot, me: Me) -> tuple[str, str] | None:
    """Who would lead after us, as (name, gRPC address): a switchover's target,
    else the selected backup (we are the primary) or our primary (we are a
    backup); None when that coordinator is not registered with an address."""
    if s.switchover and s.switchover != me.name:
        target = s.switchover
    elif me.role == "primary":
        target = s.settings.selected_backup
    else:
        target = me.primary
    peer = s.coordinators.get(target) if target else None
    return (target, peer.grpc) if peer is not None and peer.grpc else None


def may_lead_next(s: Snapshot, me: Me) -> bool:
    """Keep a takeover's starting point warm (runtime/mirror.py) only where
    one can come: the primary, the selected backup, a switchover's target."""
    return me.role == "primary" or s.settings.selected_backup == me.name or s.switchover == me.name


def takeover(s: Snapshot, me: Me) -> Takeover:
    """How our taking up leadership is recorded, named by who led before us."""
    name, previous = me.name, me.previous_leader
    if s.switchover == name:
        kind, detail = "switchover", f"{name} leads after a planned switchover"
    elif me.role == "backup" and me.revoked:
        kind, detail = "failover", f"{name} took over: {me.revoked}"
    elif me.role == "backup":
        kind, detail = "failover", f"{name} took over: the primary {me.primary} is unavailable (its lease ended)"
    elif me.revoked:
        kind, detail = "leader", f"{name} leads: {me.revoked}"
    elif previous is not None and previous.role == "backup":
        kind, detail = "handback", f"{name} leads again; {previous.name} handed back"
    else:
        kind, detail = "leader", f"{name} leads"
    return Takeover(kind, detail, clear_switchover=bool(s.switchover and s.switchover != name),
                    ensure_admin=me.role == "primary")


def _handover(d: Decision, me: Me) -> Handover:
    reason = "handback" if d.action == HANDBACK else "switchover"
    return Handover(reason, "handback" if reason == "handback" else "resign",
                    f"{me.name} hands the baton to {d.target} ({reason})")


def contact_interval(settings: Settings) -> float:
    """How often the leading primary records contact with the selected backup:
    every second, more often when deselect_after is shorter than 10 s."""
    return min(1.0, settings.deselect_after / 10)


def failback_delay(settings: Settings, flag: float) -> float:
    """The cluster setting when an admin saved one, else this backup's --failback-delay."""
    return flag if settings.failback_delay is None else settings.failback_delay


def primary_ready_since(s: Snapshot, me: Me, since: float | None, now: float) -> float | None:
    """Since when (by the caller's clock `now`) a backup's primary has been
    registered and ready: `since` while it stays so, `now` when it just became
    so, None when it is not (or we are the primary)."""
    if me.role != "backup":
        return None
    peer = s.coordinators.get(me.primary)
    if peer is None or not peer.ready:
        return None
    return now if since is None else since


@dataclasses.dataclass(frozen=True)
class SwitchoverSeen:
    """The switchover request as a watch or a snapshot saw it."""

    target: str | None   # None: no request
    mod_revision: int    # of the request (0: none)
    at_revision: int     # the revision at which it was seen

    def newest(self, other: "SwitchoverSeen | None") -> "SwitchoverSeen":
        """Of the two, the one seen at the later revision (self on a tie)."""
        return self if other is None or self.at_revision >= other.at_revision else other


def campaign_at_once(seen: SwitchoverSeen | None, me: Me, *, ready: bool, session_lost: bool) -> int | None:
    """After the leader key was deleted (a planned handover: switchover or
    handback), whether to campaign before reading a snapshot: only where the
    rules above say "campaign" whatever else the snapshot held, i.e. for the
    target of the switchover request we saw, or for the primary when we saw
    none. Returns the switchover key's mod revision the campaign compares (0:
    that there is no request), or None: wait for the cycle's snapshot.
    Reads me.name, role, epoch (we still hold one: no) and acting."""
    if seen is None or not ready or me.acting or me.epoch is not None or session_lost:
        return None
    if seen.target == me.name:
        return seen.mod_revision
    if seen.target is None and me.role == "primary":
        return 0
    return None
