"""The agent's presence key `agents/<name>`, held by the agent's own lease.

`AgentLease` owns a lease.session.Session: the agent's main loop ticks it
(Session.heartbeat), so the lease stays alive only while that loop turns. If
the session is lost (etcd unreachable for longer than renew_deadline, or the
loop stalled), the next tick grants a new lease, at most once per
retry_interval while etcd is down.

`Presence` keeps the key's value equal to what the agent wants it to be with
the current lease: it writes when the value or the lease changed, and retries
a failed write on a later sync.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cluster.records import AgentRecord
from lease.client import Etcd
from lease.errors import EtcdError
from lease.session import Session

log = logging.getLogger(__name__)


class AgentLease:
    """A Session that is replaced when lost. `lease_id` is None while there is none."""

    def __init__(self, etcd: Etcd, ttl: int = 10, retry_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.etcd = etcd
        self.ttl = ttl
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._next_try = 0.0
        self._closed = False
        # Validates the timings now (ConfigError), not at the first tick.
        Session(etcd, ttl=ttl)

    @property
    def lease_id(self) -> int | None:
        session = self._session
        if session is None or session.lost.is_set():
            return None
        return session.lease_id

    @property
    def renew_deadline(self) -> float:
        return self.ttl * 2 / 3

    def tick(self) -> int | None:
        """The owner's heartbeat; grants a new lease when there is none.
        Returns the live lease id or None. Never raises."""
        with self._lock:
            if self._closed:
                return None
            session = self._session
            if session is not None and not session.lost.is_set():
                session.heartbeat()
                return session.lease_id
            if session is not None:
                log.warning("agent lease lost (%s); registering again", session.lost_reason)
                session.close()
                self._session = None
            now = self._clock()
            if now < self._next_try:
                return None
            self._next_try = now + self.retry_interval
            try:
                self._session = Session(self.etcd, ttl=self.ttl).start()
            except EtcdError as exc:
                log.warning("cannot register with etcd yet: %s", exc)
                return None
            return self._session.lease_id

    def close(self) -> None:
        """Revoke the lease: every key attached to it disappears at once. Never raises."""
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            session.close()


class Presence:
    """One presence key written with a lease from an AgentLease."""

    def __init__(self, etcd: Etcd, key: str, lease: AgentLease, retry_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.etcd = etcd
        self.key = key
        self.lease = lease
        self.retry_interval = retry_interval
        self._clock = clock
        self._written: tuple[bytes, int] | None = None
        self._next_try = 0.0
        self._encoded: tuple[AgentRecord, bytes] | None = None  # the last value asked for, encoded

    @property
    def registered(self) -> bool:
        return self._written is not None and self._written[1] == self.lease.lease_id

    def sync(self, value: AgentRecord) -> bool:
        """Make the key hold value with the current lease. Returns True when it
        does. A failed write is logged and retried on a later call."""
        wanted = self.wanted(value)
        if wanted is None:
            return self.registered
        try:
            self.etcd.put(self.key, wanted[0], lease=wanted[1])
        except EtcdError as exc:
            self.write_failed(exc)
            return False
        self.written(wanted)
        return True

    def wanted(self, value: AgentRecord) -> tuple[bytes, int] | None:
        """(encoded value, lease) to write now, or None when there is nothing to
        write (already written, no lease, or waiting to retry). For callers that
        batch many agents' writes (the bench pool): then written() or write_failed()."""
        lease_id = self.lease.lease_id
        if lease_id is None:
            self._written = None
            return None
        # Comparing records is cheaper than encoding JSON, and the bench pool asks for
        # 200 agents' values 20 times a second; encode only a value that changed.
        if self._encoded is None or self._encoded[0] != value:
            self._encoded = (value, value.to_json())
        wanted = (self._encoded[1], lease_id)
        if wanted == self._written or self._clock() < self._next_try:
            return None
        return wanted

    def written(self, wanted: tuple[bytes, int]) -> None:
        if self._written is None or self._written[1] != wanted[1]:
            log.info("registered as %s", self.key)
        self._written = wanted

    def write_failed(self, exc: Exception) -> None:
        log.warning("could not write presence %s: %s", self.key, exc)
        self._next_try = self._clock() + self.retry_interval

    def withdraw(self) -> None:
        """Delete the key (for a shared lease that outlives this agent). Never raises."""
        self._written = None
        try:
            self.etcd.delete(self.key)
        except EtcdError as exc:
            log.info("could not delete presence %s: %s (it goes with the lease)", self.key, exc)
