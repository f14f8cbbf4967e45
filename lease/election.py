"""Leader election on one etcd key, with the epoch as fencing token.

The election borrows a Session (it never grants or renews a lease). The
leader key is created only by a transaction comparing its create revision
with 0 and carries the session's lease (docs/design.md section 3, rule 1); its
create revision is the leader's **epoch**. Every write a leader makes is a
fenced transaction that also compares the leader key's create revision with
that epoch (rule 2), so a paused or cut-off old leader cannot change
anything: its transaction fails with NotLeader. That comparison is built in
one place, Fence; every writer commits through a Fence.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from lease.client import Etcd
from lease.errors import EtcdError, LeaseLost, NotLeader
from lease.session import Session
from lease.watcher import KV, WatchEvent, Watcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads: the leader key's value, its create revision (epoch) and lease."""

    value: bytes
    epoch: int
    lease_id: int


class TxnConflict(EtcdError):
    """A fenced transaction's extra comparison (`also`) failed while we still lead."""


@dataclass(frozen=True)
class Fence:
    """The right to write for one epoch: the leader key and the create revision
    it had when we won (or when a reader checked it). Like etcd's Go
    Election.Rev(), it is a plain value: Election.fence() makes one while we
    lead, and a process that only knows the key and the epoch (the web
    workers, the runtime) builds its own, Fence(etcd, key, epoch).

    Building one without an epoch raises NotLeader (nobody who would write
    leads)."""

    etcd: Etcd
    key: str
    epoch: int

    def __post_init__(self) -> None:
        if self.epoch is None:
            raise NotLeader(f"not leader of {self.key}: no epoch")

    def compare(self) -> Any:
        """The etcd comparison that holds while the fence does: the leader
        key's create revision is our epoch (docs/design.md section 3, rule 2)."""
        return self.etcd.ops.create(self.key) == self.epoch

    def commit(self, ops: Iterable, also: Iterable = ()) -> list:
        """Commit ops in one transaction, only while the fence holds and every
        comparison in `also` holds; returns the op responses.

        Raises NotLeader when the leader key is gone or belongs to another
        epoch, TxnConflict when we still lead but a comparison in `also`
        failed (told apart by reading the leader key in the failure branch of
        the same transaction), and EtcdUnavailable when etcd cannot say (then
        the write may or may not have been applied, like any timed-out
        write)."""
        ok, responses = self.etcd.txn([self.compare(), *also], list(ops), [self.etcd.ops.get(self.key)])
        if ok:
            return responses
        current = responses[0] if responses else []
        if current and current[0][1].create_revision == self.epoch:
            raise TxnConflict(f"fenced transaction on {self.key} (epoch {self.epoch}) failed a comparison")
        holder = f"epoch {current[0][1].create_revision}" if current else "nobody"
        raise NotLeader(f"not leader of {self.key}: epoch {self.epoch} is over (now {holder})")


class Election:
    """Campaign for, hold and give up `key` with a borrowed Session.

    `session` may be None for a read-only view (leader(), observe())."""

    def __init__(self, etcd: Etcd, key: str, session: Session):
        self.etcd = etcd
        self.key = key
        self.session = session
        self._epoch: int | None = None

    @property
    def epoch(self) -> int | None:
        """Our leader key's create revision while we lead (by our last knowledge), else None."""
        return self._epoch

    @property
    def is_leader(self) -> bool:
        """Local view: we won and the session is not lost. A fenced transaction
        is the authority; this is for deciding whether to try."""
        return self._epoch is not None and not self.session.lost.is_set()

    def campaign(self, value: bytes | str, also: Iterable = ()) -> bool:
        """One attempt: create the leader key with our lease if nobody holds it
        (and every compare in `also` holds: a caller's condition checked in the
        same transaction, e.g. that a switchover request is unchanged).

        Returns True when we lead (also when the key already carries our own
        lease, e.g. after a retried campaign whose write went through).
        Raises LeaseLost if the session is lost, EtcdUnavailable if etcd does
        not answer."""
        self._check_session()
        lease = self.session.lease_id
        ok, responses = self.etcd.txn(
            [self.etcd.ops.create(self.key) == 0, *also],
            [self.etcd.ops.put(self.key, value, lease=lease)],
            [self.etcd.ops.get(self.key)])
        if ok:
            self._epoch = responses[0].response_put.header.revision
            log.info("won election for %s, epoch %d", self.key, self._epoch)
            return True
        current = responses[0] if responses else []
        if current and current[0][1].lease_id == lease:
            self._epoch = current[0][1].create_revision
            return True
        self._epoch = None
        return False

    def fence(self) -> Fence:
        """The fence of our epoch, for committing writes. Raises NotLeader if
        we do not lead (by our last knowledge)."""
        return Fence(self.etcd, self.key, self._epoch)

    def proclaim(self, value: bytes | str) -> None:
        """Change the leader key's value, fenced. Raises NotLeader if we no
        longer lead; then our epoch is dropped, so is_leader turns False."""
        self._check_session()
        try:
            self.fence().commit([self.etcd.ops.put(self.key, value, lease=self.session.lease_id)])
        except NotLeader:
            self._epoch = None
            raise

    def resign(self, last_ops: Iterable = ()) -> None:
        """Delete the leader key if it is still ours (fenced); no-op if we do not lead.
        last_ops (e.g. recording the handover) commit in the same transaction."""
        if self._epoch is None:
            return
        try:
            self.fence().commit([*last_ops, self.etcd.ops.delete(self.key)])
        except NotLeader:
            pass
        finally:
            self._epoch = None

    def leader(self) -> LeaderInfo | None:
        """The current leader as etcd sees it, or None. Raises EtcdUnavailable."""
        value, meta = self.etcd.get(self.key)
        if value is None:
            return None
        return LeaderInfo(value, meta.create_revision, meta.lease_id)

    def observe(self, callback: Callable[[LeaderInfo | None], None]) -> Watcher:
        """Call callback(LeaderInfo|None) now and on every change of the leader
        key (deletion included) until the returned Watcher is stopped.

        The first call happens before observe returns; the rest on the
        watcher's thread. Raises EtcdUnavailable if the first read fails."""
        resp = self.etcd.range_response(self.key)
        revision = resp.header.revision
        first = resp.kvs[0] if resp.kvs else None
        _safe(callback, LeaderInfo(first.value, first.create_revision, first.lease) if first else None)

        def on_events(events: list[WatchEvent]) -> None:
            for e in events:
                _safe(callback, LeaderInfo(e.value, e.create_revision, e.lease) if e.type == "put" else None)

        def on_reset(current: dict[str, KV], _revision: int) -> None:
            kv = current.get(self.key)
            _safe(callback, LeaderInfo(kv.value, kv.create_revision, kv.lease) if kv else None)

        return Watcher(self.etcd, self.key, start_revision=revision + 1,
                       on_events=on_events, on_reset=on_reset).start()

    def wait_for_vacancy_and_campaign(self, value: bytes | str, stop: threading.Event,
                                      poll: float = 1.0) -> bool:
        """Campaign now and again each time the leader key is deleted (watched,
        so a successor acts within milliseconds), or at least every `poll`
        seconds. Returns True once we lead, False when `stop` is set first.
        etcd errors (no quorum, a member down) are logged and retried; the
        session decides when to give up: raises LeaseLost once it is lost."""
        vacancy = threading.Event()

        def seen(info: LeaderInfo | None) -> None:
            if info is None:
                vacancy.set()

        watcher: Watcher | None = None
        try:
            while not stop.is_set():
                vacancy.clear()
                try:
                    if watcher is None:
                        watcher = self.observe(seen)
                    if self.campaign(value):
                        return True
                except LeaseLost:
                    raise
                except EtcdError as exc:
                    log.warning("campaign for %s failed, retrying: %s", self.key, exc)
                vacancy.wait(poll)
            return False
        finally:
            if watcher is not None:
                watcher.stop()

    def _check_session(self) -> None:
        if self.session.lost.is_set() or self.session.lease_id is None:
            raise LeaseLost(f"session lost ({self.session.lost_reason or 'not started'}); make a new session")


def _safe(callback: Callable, arg: object) -> None:
    try:
        callback(arg)
    except Exception:  # noqa: BLE001 - an observer's bug must not end the observation
        log.exception("election observer raised")
