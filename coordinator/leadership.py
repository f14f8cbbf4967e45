"""The leadership actions of the HA loop: what the daemon does once
coordinator.ha has decided.

Campaign (also at once, when a planned handover deletes the leader key),
take up leadership and write the takeover's records, hand over (a handback
or a switchover), step down, revoke the lease of a leader whose process is
gone, and the leading primary's writes of the selected backup's contact
clock and its deselection. Every write is fenced by our
epoch (docs/design.md section 3, rule 2), so a coordinator that no longer leads
changes nothing: the write fails with NotLeader.

Leadership owns the Election (replaced by a fresh one, holding no epoch,
whenever we step down or the session changes) and the takeover counters the
state file reports. It decides nothing: the records come from the Decision.
"""
from __future__ import annotations

import logging
from typing import Callable

from cluster.events import event_ops
from cluster.keys import Keys, encode
from cluster.records import LeaderRecord
from coordinator import ha
from coordinator.runtime.runtime import Runtime
from lease.election import Election
from lease.errors import EtcdError, NotLeader
from lease.session import Session

log = logging.getLogger("baton.coordinator")


class Leadership:
    """Acts on the HA decisions for coordinator `name`; `leader_value` is our leader key's value."""

    def __init__(self, etcd, keys: Keys, name: str, runtime: Runtime, leader_value: bytes,
                 wall: Callable[[], float], initial_settings: dict | None = None):
        self.etcd = etcd
        self.keys = keys
        self.name = name
        self.runtime = runtime
        self.leader_value = leader_value
        self.wall = wall
        self.election: Election | None = None
        self.takeovers = 0   # times this coordinator began to lead
        self.failovers = 0   # of which as a backup standing in for its primary
        self.handovers = 0   # planned handovers (switchover, handback) made as leader
        self.revocations = 0  # leases of crashed leaders this coordinator revoked
        self.revoked: ha.Revocation | None = None  # our last revocation, to name the takeover after it
        self.admin_password: str | None = None
        # Settings the primary stores the first time it leads a cluster that has none
        # (--initial-backup): cluster.settings.seed_settings never overrides a later choice.
        self.initial_settings = dict(initial_settings or {})
        self.previous_leader: LeaderRecord | None = None  # who led before us, to name the takeover
        self.records_due = False   # won early: the takeover's records are written after the snapshot

    def new_session(self, session: Session) -> None:
        """Campaign with this session from now on (a fresh Election holds no epoch)."""
        self.election = Election(self.etcd, self.keys.leader, session)

    def saw_leader(self, leader: LeaderRecord | None) -> None:
        """Remember who led while we did not, to name our next takeover."""
        if leader is not None and leader.name != self.name:
            self.previous_leader = leader

    def revoked_why(self) -> str | None:
        """Why we revoked the lease of the leader we last saw (None: we did not)."""
        r, previous = self.revoked, self.previous_leader
        return r.why if r is not None and previous is not None and previous.epoch == r.epoch else None

    def revoke(self, d: ha.Decision) -> None:
        """The leader's process is gone: end its lease now instead of at its expiry.
        Not a state write (docs/design.md section 3, rule 2): etcd deletes the leader
        key and the dead leader's registration with the lease, exactly as at expiry,
        and the takeover that follows by the normal path records why, fenced."""
        r = d.revocation
        if not self.etcd.lease_revoke(r.lease_id):
            log.info("the lease of %s (epoch %s) had already ended", d.target, r.epoch)
        self.revocations += 1
        self.revoked = r

    def campaign(self, takeover: ha.Takeover) -> None:
        if not self.election.campaign(self.leader_value):
            return
        self.takeovers += 1
        self.take_up(takeover)

    def campaign_at_once(self, switchover_revision: int) -> None:
        """A planned handover (switchover, handback): the next leader campaigns
        as soon as its watch sees the leader key deleted, without first reading
        a snapshot (five round trips under load, ~50 ms of the handover), where
        ha.campaign_at_once said so. The campaign transaction compares the
        switchover key's mod revision with what we saw (0: no request), so a
        request changed meanwhile makes it fail and the normal cycle decides."""
        if switchover_revision:
            guard = self.etcd.ops.mod(self.keys.switchover) == switchover_revision
        else:
            guard = self.etcd.ops.create(self.keys.switchover) == 0
        if not self.election.campaign(self.leader_value, also=[guard]):
            return
        self.takeovers += 1
        self.records_due = True
        try:
            self.runtime.start(self.election.epoch)  # serve now; the records follow this cycle's snapshot
        except EtcdError:
            pass  # take_up starts it again (it raises there, and the cycle reports it)

    def take_up(self, takeover: ha.Takeover) -> None:
        epoch = self.election.epoch
        self.previous_leader = None
        self.revoked = None
        if takeover.kind == "failover":
            self.failovers += 1
        ops = event_ops(self.etcd, self.keys, takeover.kind, self.name, epoch, takeover.detail, now=self.wall)
        if takeover.clear_switchover:
            ops.append(self.etcd.ops.delete(self.keys.switchover))  # a stale request: the baton is here now
        try:
            # Serve first (agents are already dialling us); the records below are fenced by
            # the same epoch, so writing them a few milliseconds later changes nothing.
            self.runtime.start(epoch)
            self._fenced(ops)
            if takeover.ensure_admin:
                from cluster.users import admin_password_from_env, ensure_admin

                given = admin_password_from_env()  # checked at start (cli/main.py cmd_coordinator)
                password = ensure_admin(self.etcd, self.keys, self.election.fence(), password=given)
                if password is not None:
                    self.admin_password = password
                    if given is None:
                        log.warning("created user 'admin' with password %s (shown once)", password)
            if takeover.ensure_admin and self.initial_settings:  # the primary's first-start duties
                from cluster.settings import seed_settings

                if seed_settings(self.etcd, self.keys, self.election.fence(), self.initial_settings):
                    log.info("first start: stored the initial settings %s", self.initial_settings)
        except NotLeader:
            self.step_down("lost the leader key while taking up leadership")
            return
        log.info("%s: %s now leads (epoch %s)", takeover.kind, self.name, epoch)

    def hand_over(self, d: ha.Decision) -> None:
        """Clean handover: stop dispatching, flush, record and resign (one fenced
        transaction, a round trip less), then say Goodbye to the agents."""
        handover = d.handover
        epoch = self.election.epoch

        def resign() -> None:
            self.election.resign(last_ops=event_ops(
                self.etcd, self.keys, handover.event, self.name, epoch, handover.detail, now=self.wall))
            self.handovers += 1  # the resignation committed: the baton was handed over

        self.runtime.stop(f"{handover.reason} to {d.target}", successor=d.successor, before_goodbye=resign)
        self.step_down(f"{handover.reason} to {d.target}")

    def touch_contact(self, backup: str) -> None:
        self._fenced([self.etcd.ops.put(self.keys.contact(backup), encode({"last_seen": self.wall()}))])

    def deselect(self, d: ha.Decision, snap: ha.Snapshot) -> None:
        settings = snap.settings.updated({"selected_backup": None})
        ops = [self.etcd.ops.put(self.keys.settings, settings.to_json()),
               self.etcd.ops.delete(self.keys.contact(d.target))]
        ops += event_ops(self.etcd, self.keys, "deselection", self.name, self.election.epoch,
                         d.sentence, now=self.wall)
        # Compare the settings' revision too: an admin's concurrent Save All wins.
        self._fenced(ops, extra_compare=[self.etcd.ops.mod(self.keys.settings) == snap.settings_revision])
        log.warning("%s", d.sentence)

    def step_down(self, reason: str) -> None:
        self.runtime.stop(f"not leader: {reason}")
        if self.election is not None:
            # A fresh Election holds no epoch: we no longer claim the leader key.
            self.election = Election(self.etcd, self.keys.leader, self.election.session)

    def _fenced(self, ops: list, extra_compare: list | None = None):
        return self.election.fence().commit(ops, also=extra_compare or ())
