"""The HA loop's watches: wake the loop on every change it decides from, and
catch the moment of a planned handover.

One Watcher each on the leader key, the registered coordinators, the
settings and the switchover request; any event or watch error wakes the
loop, so it decides within milliseconds instead of at its next tick. The
watch also remembers that the leader key was deleted and the newest
switchover request it or a snapshot saw: what ha.campaign_at_once needs to
let the next leader of a planned handover campaign before reading a
snapshot.
"""
from __future__ import annotations

import logging
import threading

from cluster.keys import Keys, decode
from coordinator import ha
from lease.watcher import Watcher

log = logging.getLogger("baton.coordinator")


class HandoverWatch:
    """Watches for the HA loop; `start()`, `stop()`. Callbacks run on the watch threads."""

    def __init__(self, etcd, keys: Keys, wake: threading.Event):
        self.etcd = etcd
        self.keys = keys
        self._wake = wake
        self._watchers: list[Watcher] = []
        self._leader_deleted = False
        self.seen: ha.SwitchoverSeen | None = None  # the newest switchover request seen; None: not yet

    def start(self) -> None:
        for key, prefix in ((self.keys.leader, False), (self.keys.coordinators, True),
                            (self.keys.settings, False), (self.keys.switchover, False)):
            w = Watcher(self.etcd, key, prefix=prefix, on_events=self._on_events, on_error=self._on_error)
            w.start()
            self._watchers.append(w)

    def stop(self) -> None:
        for w in self._watchers:
            w.stop()

    def leader_deleted(self) -> bool:
        """Whether the leader key was deleted since the last call."""
        deleted, self._leader_deleted = self._leader_deleted, False
        return deleted

    def saw(self, seen: ha.SwitchoverSeen) -> None:
        """Keep the newest of what the watch and the snapshots said of the switchover request."""
        self.seen = seen.newest(self.seen)

    def _on_events(self, events) -> None:
        for e in events:
            if e.key == self.keys.leader and e.type == "delete":
                self._leader_deleted = True
            elif e.key == self.keys.switchover:
                target = switchover_target(e.value) if e.type == "put" else None
                self.saw(ha.SwitchoverSeen(target, e.mod_revision if target else 0, e.mod_revision))
        self._wake.set()

    def _on_error(self, exc: Exception) -> None:
        log.debug("watch error: %s", exc)
        self._wake.set()


def switchover_target(raw: bytes | None) -> str | None:
    """The coordinator a switchover request names, or None for a value that names none."""
    try:
        data = decode(raw)
    except ValueError:
        return None
    return data.get("target") if isinstance(data, dict) else None
