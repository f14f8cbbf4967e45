"""Login throttling, shared by every worker of every coordinator of the cluster.

Failed logins (form or Basic) are counted twice: per (user name, client
address) and per client address. After `max_failures` failures of the pair,
or `address_max` failures from the address whatever the names, that pair or
address is locked out for `lockout` seconds (429). The address limit is what
stops one address from trying one password on many user names.

The counts live in etcd (EtcdCounts: cluster.keys throttle/...), so a user
locked out on the primary is locked out on the backup too, and each gunicorn
worker does not grant its own attempts. A count is forgotten COUNT_WINDOW
seconds after its first failure (the key's lease), a lockout `lockout`
seconds after it began. Without etcd (unit tests) the counts live in memory.

These keys are written without a fence, also by a backup: they are not the
cluster's state (no leader decides anything from them), and a coordinator
that may not write state must still count failed logins.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Callable

from cluster.keys import Keys, decode, encode

COUNT_WINDOW = 15 * 60.0
_ATTEMPTS = 5  # compare-and-swap retries under concurrent failures


class MemoryCounts:
    """The counts in this process's memory (tests, a single process)."""

    def __init__(self):
        self._items: dict[str, tuple[list, int]] = {}
        self._lock = threading.Lock()

    def read(self, key: str) -> tuple[list | None, Any]:
        with self._lock:
            return self._items.get(key, (None, 0))

    def write(self, key: str, entry: list, token: Any, ttl: float, fresh: bool) -> bool:
        with self._lock:
            if self._items.get(key, (None, 0))[1] != token:
                return False
            self._items[key] = (entry, token + 1)
            return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class EtcdCounts:
    """The counts in etcd, each key with a lease so that nothing needs cleaning up.

    `etcd` is a callable returning the client (the web app creates it per
    worker, after fork). Errors propagate as lease.errors.EtcdError: with
    etcd down nobody can log in anyway (the users are in etcd too).
    """

    def __init__(self, etcd: Callable[[], Any]):
        self._etcd = etcd

    def read(self, key: str) -> tuple[list | None, Any]:
        raw, meta = self._etcd().get(key)
        if raw is None:
            return None, None
        try:
            entry = decode(raw)
        except ValueError:
            entry = None
        return (entry if _valid(entry) else None), meta

    def write(self, key: str, entry: list, token: Any, ttl: float, fresh: bool) -> bool:
        """Put entry if the key is unchanged since read (token); a new lease when
        the key is new or `fresh` (a lockout starts its own time)."""
        etcd = self._etcd()
        lease = etcd.lease_grant(int(math.ceil(ttl)) + 1) if fresh or token is None else token.lease_id
        compare = (etcd.ops.version(key) == 0) if token is None else (etcd.ops.mod(key) == token.mod_revision)
        ok, _ = etcd.txn([compare], [etcd.ops.put(key, encode(entry), lease=lease)])
        return ok

    def forget(self, key: str) -> None:
        etcd = self._etcd()
        # Read first: a successful Basic login happens on every CLI request, and a
        # delete is a write through etcd's log even when there is nothing to delete.
        if etcd.get(key)[0] is not None:
            etcd.delete(key)


def _valid(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry))


class LoginThrottle:
    """Lock a (user, address) pair, or a whole address, out after repeated failures."""

    def __init__(self, max_failures: int, lockout: float, clock: Callable[[], float],
                 counts: MemoryCounts | EtcdCounts | None = None, address_max: int | None = None,
                 keys: Keys | None = None):
        self.max_failures = max_failures
        self.address_max = address_max or 4 * max_failures
        self.lockout = lockout
        self.clock = clock
        self.counts = counts or MemoryCounts()
        self.keys = keys or Keys()

    def seconds_locked(self, user: str, address: str) -> float:
        """How long the pair (or the address) stays locked out; 0 when it may try."""
        now = self.clock()
        left = 0.0
        for key in (self.keys.throttle_login(address, user), self.keys.throttle_address(address)):
            entry, _ = self.counts.read(key)
            if entry:
                left = max(left, entry[1] - now)
        return left

    def failed(self, user: str, address: str) -> None:
        self._count(self.keys.throttle_login(address, user), self.max_failures)
        self._count(self.keys.throttle_address(address), self.address_max)

    def succeeded(self, user: str, address: str) -> None:
        """Forget the pair's failures (not the address's: one good account must not
        reset the count of an address spraying others)."""
        self.counts.forget(self.keys.throttle_login(address, user))

    def _count(self, key: str, limit: int) -> None:
        for _ in range(_ATTEMPTS):
            entry, token = self.counts.read(key)
            count, until = entry or (0, 0.0)
            count += 1
            locking = count >= limit
            if locking:
                count, until = 0, self.clock() + self.lockout
            ttl = self.lockout if locking else max(COUNT_WINDOW, self.lockout)
            if self.counts.write(key, [count, until], token, ttl, locking):
                return
        # Lost the race every time: others are counting failures for this key right
        # now, so it is under attack and will be locked by their counts.
