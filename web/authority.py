"""May this coordinator's UI change anything right now? The web asks, it never decides.

A coordinator *leads* when the leader key names it AND its own daemon says,
through the daemon state file (fresh within renew_deadline), that it is
acting as leader with the epoch of that same key. It is *writable* when it
leads and is a primary: a backup's UI is view only even while it serves
agents (docs/design.md section 1). The one exception, a planned switchover, only
needs `leads`.

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
        return self.leads and self.role == "primary"

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
                        f"is unavailable but accepts no changes. Make changes on {target} once it is back.")
            return f"This is the backup coordinator {self.name}; it is view only. Make changes on {target}."
        if leader is None:
            return "No coordinator leads right now; try again in a few seconds."
        if leader != self.name:
            return f"{self.name} is not serving agents right now ({leader} is); it is view only until it leads again."
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
