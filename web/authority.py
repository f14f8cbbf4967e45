"""May this coordinator's UI change anything right now? The web asks, it never decides.

A coordinator *leads* when the leader key names it AND its own daemon says,
through the daemon state file (fresh within renew_deadline), that it is
acting as leader with the epoch of that same key. Two kinds of write follow
(docs/design.md section 1, "Builds are work, not changes"):

- work (new builds, cancelling a build): accepted where the coordinator
  leads, whatever its role, so that a backup serving agents during a
  primary outage still takes builds (`accepts_builds`);
- changes (settings, users, agent configuration): only where it leads and is
  a primary (`writable`). A planned switchover only needs `leads`.

A refusal names the coordinator to use (`target`): for work the one that
serves agents, for changes the primary.

The check happens on every write request and is then enforced again by the
commit itself: every write is a transaction comparing the leader key's create
revision with the epoch we checked, so a check that went stale between the
read and the write cannot slip through (it raises NotLeader -> 403).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from cluster.daemon_state import read_state
from cluster.keys import Keys
from cluster.records import LeaderRecord
from lease.election import Fence, TxnConflict


Conflict = TxnConflict  # an extra comparison failed while we still lead (a concurrent change)


@dataclasses.dataclass(frozen=True)
class Authority:
    name: str
    role: str
    leader: LeaderRecord | None  # the leader key (None: missing or naming no coordinator)
    epoch: int | None        # the leader key's create revision
    leader_lease: int | None
    state: dict | None       # the daemon state file, None when missing or stale

    @property
    def acting(self) -> bool:
        """Our daemon says it acts as leader with the epoch the leader key has now."""
        return bool(self.state and self.state.get("acting") and self.epoch is not None
                    and self.state.get("epoch") == self.epoch)

    @property
    def leads(self) -> bool:
        return bool(self.leader and self.leader.name == self.name and self.acting)

    @property
    def writable(self) -> bool:
        """Settings, users and agent configuration may change here now."""
        return self.leads and self.role == "primary"

    @property
    def accepts_builds(self) -> bool:
        """New builds and cancellations are accepted here now (the coordinator serving agents)."""
        return self.leads

    def target(self, work: bool, primary: str | None) -> str | None:
        """The coordinator to send a refused write to: for work the leader (None when
        nobody leads), for changes the primary (this one, when it is the primary)."""
        if work:
            return self.leader_name
        return (primary or None) if self.role == "backup" else self.name

    @property
    def leader_name(self) -> str | None:
        return self.leader.name if self.leader else None

    def refusal(self, primary: str | None = None) -> str:
        """One sentence saying why this coordinator refuses changes and where to go."""
        leader = self.leader_name
        if self.role == "backup":
            target = primary or "the primary"
            if leader == self.name:
                return (f"This is the backup coordinator {self.name}; it serves agents while the primary "
                        f"is unavailable and accepts builds, but settings, users and agent configuration "
                        f"change only on the primary. Make this change on {target} once it is back.")
            return f"This is the backup coordinator {self.name}; it is view only. Make changes on {target}."
        if leader is None:
            return "No coordinator leads right now; try again in a few seconds."
        if leader != self.name:
            return (f"{self.name} is not serving agents right now ({leader} is); settings, users and agent "
                    f"configuration change only on the leading primary, so here once {self.name} leads again.")
        return f"{self.name} is not acting as leader right now (its lease is not being renewed); try again shortly."

    def build_refusal(self) -> str:
        """One sentence saying why this coordinator refuses builds and cancellations, and where to go."""
        leader = self.leader_name
        if leader is None:
            return "No coordinator is serving agents right now; submit builds again in a few seconds."
        if leader != self.name:
            return (f"{self.name} is not serving agents right now; builds and cancellations go to "
                    f"{leader}, which is.")
        return f"{self.name} is not acting as leader right now (its lease is not being renewed); try again shortly."


def read_authority(etcd, keys: Keys, config: dict, leader_kv: tuple[bytes | None, Any] | None = None,
                   now: float | None = None) -> Authority:
    """Read the leader key (unless the caller already has it) and the daemon state file."""
    value, meta = leader_kv if leader_kv is not None else etcd.get(keys.leader)
    leader = LeaderRecord.parse(value, meta.create_revision, meta.lease_id) if value is not None else None
    state = read_state(config.get("BATON_DAEMON_STATE"), max_age=config["BATON_RENEW_DEADLINE"], now=now)
    return Authority(
        name=config["BATON_NAME"], role=config["BATON_ROLE"], leader=leader,
        epoch=meta.create_revision if value is not None else None,
        leader_lease=meta.lease_id if value is not None else None, state=state)


def write_fence(etcd, keys: Keys, auth: Authority) -> Fence:
    """The fence for the writes `auth` allowed: the leader key at the epoch it read.

    Its commit raises NotLeader when the leader key changed since, Conflict
    when only an extra comparison failed (someone else changed the same key
    meanwhile). Raises NotLeader at once when auth saw no leader.
    """
    return Fence(etcd, keys.leader, auth.epoch)
