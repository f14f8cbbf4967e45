"""Group commit: every state write of the leader, fenced and batched.

Callers `submit(ops)` a list of etcd ops that must commit together and get a
`concurrent.futures.Future`. Writer threads gather what is queued for a few
milliseconds and commit it as one transaction of at most `max_ops` ops
whose only comparison is the fence's (lease.election.Fence.compare: the
leader key's create revision equals our epoch, docs/design.md section 3 rule 2). A future resolves only once its
transaction committed. Up to `writers` transactions are in flight at once
(etcd's round trip, not its throughput, is what limits one writer); writes
of the same key never share or overtake a transaction, so each key's
writes commit in submission order. Writes of different keys may commit in
any order: submit a write that depends on another only once that one's
future resolved.

Failure:
- the fence comparison fails: the epoch is stale for good (a create revision
  never comes back), so that batch, everything queued and everything
  submitted later fail with NotLeader, and `on_not_leader` is called once;
- etcd is unavailable: that batch's futures fail with EtcdUnavailable (the
  write may or may not have been applied: its outcome is unknown); the
  caller retries or steps down. A retry must not apply a write twice (a task
  record written twice is a task that ended twice, docs/design.md section 3
  rule 5): submit it with `once=True` (below);
- etcd refuses the transaction (e.g. a value over its request size limit):
  each submission of the batch is tried again alone, so one bad write does
  not take the others down with it; the refused one's future fails with
  the EtcdError.
Every failed write (not NotLeader) is logged, counted in `write_errors` and
handed to `on_error`: the daemon shows the count in its state file, /healthz
and /metrics (store_write_errors), so a refused write is never silent.

Two ops on the same key may not share an etcd transaction, so a batch ends
before a submission that touches a key the batch already writes. Keys that
are rewritten often (build-status, runtime) can be submitted with
`coalesce=True`: a newer put replaces a still-queued one (last write wins)
and both callers get the same future.

Writes that must land at most once (the task records: results, never-run
and cancelled ends) are submitted with `once=True`: the submission goes in
the batch as a nested transaction that is applied only if its first put's
key does not already hold that put's value. Each such record is unique (it
names its attempt, agent, times, epoch and writer), so "already there" means
an earlier submission of the same ops landed although its caller heard only
a timeout; the future then resolves as committed, and `already_applied`
counts it. This holds whichever of the two reaches etcd first (a retry, or
the first try delayed in the network), at no extra round trip. etcd counts
a nested transaction's ops against the outer one's limit, so a `once`
submission costs one op more (at most max_ops - 1 ops).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from lease.election import Fence
from lease.errors import EtcdError, EtcdUnavailable, NotLeader

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("ops", "future", "keys", "once")

    def __init__(self, ops: list, future: Future, once: bool = False):
        self.ops = ops
        self.future = future
        self.keys = {_key_of(op) for op in ops}
        self.once = once

    @property
    def cost(self) -> int:
        """Ops it takes of a transaction's max_ops (see the module docstring)."""
        return len(self.ops) + self.once


def _key_of(op: Any) -> bytes:
    key = op.key
    return key.encode() if isinstance(key, str) else bytes(key)


class GroupCommit:
    """Batches fenced writes. Thread-safe; `close()` when done."""

    def __init__(self, etcd, fence: Fence, max_ops: int = 128,
                 window: float = 0.002, on_not_leader: Callable[[], None] | None = None,
                 writers: int = 4, on_error: Callable[[Exception], None] | None = None,
                 observe_txn: Callable[[float], None] | None = None):
        if not 1 <= max_ops <= 128:
            raise ValueError("max_ops must be between 1 and 128 (etcd's default txn limit)")
        self._etcd = etcd
        self._compare = [fence.compare()]
        self.max_ops = max_ops
        self.window = window
        self.on_not_leader = on_not_leader
        self.on_error = on_error
        self._lock = threading.Condition()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._coalescable: dict[bytes, _Entry] = {}   # key -> queued single-put entry
        self._in_flight = 0                          # entries taken by the writer, not resolved
        self._queued_ops = 0
        self._busy_keys: set[bytes] = set()           # keys of transactions in flight
        self._closed = False
        self._failed: NotLeader | None = None
        # Counters for stats and benchmarks.
        self.txns = 0
        self.ops_committed = 0
        self.write_errors = 0
        self.already_applied = 0   # `once` writes found in place (an earlier try had landed)
        self.txn_seconds: collections.deque[float] = collections.deque(maxlen=10000)  # recent round trips
        self._observe_txn = observe_txn  # a process-wide histogram (runtime.metrics), called under _lock
        self._threads = [threading.Thread(target=self._run, name=f"group-commit-{i}", daemon=True)
                         for i in range(writers)]
        for thread in self._threads:
            thread.start()

    # -- callers ------------------------------------------------------------
    def submit(self, ops: list, coalesce: bool = False, once: bool = False) -> Future:
        """Queue ops that must commit together; the future resolves (None) once
        durable or fails with NotLeader / EtcdUnavailable / EtcdError.

        coalesce=True (only for a single put) lets a later put of the same key
        replace this one while both are still queued. once=True (the first op
        a put): not applied if the first put's value is already in place, as
        after a retry of a write whose outcome was unknown (module docstring)."""
        ops = list(ops)
        if not ops:
            raise ValueError("submit needs at least one op")
        if len(ops) + once > self.max_ops:
            raise ValueError(f"{len(ops)} ops cannot commit together (at most {self.max_ops - once})")
        if coalesce and (len(ops) != 1 or once):
            raise ValueError("only a single put can be coalesced, and not with once")
        if once and not isinstance(ops[0], self._etcd.ops.put):
            raise ValueError("once needs a put first: its value tells whether the ops landed")
        with self._lock:
            if self._failed is not None:
                return _failed_future(self._failed)
            if self._closed:
                return _failed_future(EtcdError("the write queue is closed"))
            if coalesce:
                key = _key_of(ops[0])
                queued = self._coalescable.get(key)
                if queued is not None:
                    queued.ops = ops  # last write wins; same position in the queue
                    return queued.future
            entry = _Entry(ops, Future(), once)
            if coalesce:
                self._coalescable[_key_of(ops[0])] = entry
            self._queue.append(entry)
            self._queued_ops += entry.cost
            self._lock.notify_all()
            return entry.future

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + self._in_flight

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is resolved (committed or
        failed). Returns False if the timeout passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queue or self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Commit what is queued (up to timeout), then stop the writer; later
        submissions fail. Safe to call twice."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            leftover = list(self._queue)
            self._queue.clear()
            self._queued_ops = 0
            self._coalescable.clear()
            self._lock.notify_all()
        for entry in leftover:
            _fail(entry.future, EtcdError("the write queue closed before this write was sent"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- writer threads -----------------------------------------------------------
    def _take_batch(self) -> tuple[list[_Entry], set[bytes]] | None:
        with self._lock:
            while True:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return None
                # Let submissions made at about the same time join this batch.
                deadline = time.monotonic() + self.window
                while self._queued_ops < self.max_ops and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                batch, keys = self._pick()
                if batch:
                    self._in_flight += len(batch)
                    self._busy_keys |= keys
                    return batch, keys
                # Everything queued touches a key a transaction in flight writes: wait for it.
                self._lock.wait()

    def _pick(self) -> tuple[list[_Entry], set[bytes]]:
        """Take up to max_ops ops in queue order, skipping (for now) entries
        whose keys are written by a transaction in flight or by an entry
        skipped before them, so each key's writes commit in submission order."""
        batch: list[_Entry] = []
        keys: set[bytes] = set()
        blocked = set(self._busy_keys)
        skipped: list[_Entry] = []
        count = 0
        scanned = 0
        while self._queue and scanned < 4 * self.max_ops:
            entry = self._queue[0]
            if count + entry.cost > self.max_ops:
                break
            self._queue.popleft()
            scanned += 1
            if not entry.keys.isdisjoint(blocked) or not entry.keys.isdisjoint(keys):
                blocked |= entry.keys
                skipped.append(entry)
                continue
            self._queued_ops -= entry.cost
            if len(entry.ops) == 1:
                k = next(iter(entry.keys))
                if self._coalescable.get(k) is entry:
                    del self._coalescable[k]
            batch.append(entry)
            keys |= entry.keys
            count += entry.cost
        self._queue.extendleft(reversed(skipped))
        return batch, keys

    def _run(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, keys = taken
            sent = time.monotonic()
            error, landed = self._commit(batch)
            errors = [error] * len(batch)
            if (len(batch) > 1 and isinstance(error, EtcdError)
                    and not isinstance(error, (EtcdUnavailable, NotLeader))):
                # etcd refused the whole transaction: find the one it refuses (e.g. too large).
                alone = [self._commit([e]) for e in batch]
                errors = [err for err, _ in alone]
                landed = [already for _, found in alone for already in found]
                error = next((err for err in errors if isinstance(err, NotLeader)), None)
            leftover: list[_Entry] = []
            first = False
            with self._lock:
                if error is None:
                    took = time.monotonic() - sent
                    self.txn_seconds.append(took)
                    if self._observe_txn is not None:
                        self._observe_txn(took)
                    self.txns += 1
                    self.ops_committed += sum(len(e.ops) for e, err in zip(batch, errors) if err is None)
                    self.already_applied += len(landed)
                if isinstance(error, NotLeader):
                    first = self._failed is None
                    self._failed = error
                    leftover = list(self._queue)
                    self._queue.clear()
                    self._queued_ops = 0
                    self._coalescable.clear()
            for entry, err in zip(batch + leftover, errors + [error] * len(leftover)):
                if err is None:
                    entry.future.set_result(None)
                else:
                    _fail(entry.future, err)
            with self._lock:
                self._in_flight -= len(batch)
                self._busy_keys -= keys
                self._lock.notify_all()
            if first and self.on_not_leader is not None:
                try:
                    self.on_not_leader()
                except Exception:  # noqa: BLE001
                    log.exception("group commit: on_not_leader failed")
            if landed:
                log.info("group commit: %d write(s) had already landed (a retry after an unknown "
                         "outcome); not applied again", len(landed))
            failed = [err for err in errors if err is not None and not isinstance(err, NotLeader)]
            if failed:
                self._count_errors(failed)

    def _commit(self, batch: list[_Entry]) -> tuple[Exception | None, list[_Entry]]:
        """One fenced transaction of the batch's entries: the error it ended
        with (or None), and the `once` entries found already in place."""
        txn = self._etcd.ops
        ops: list = []
        guarded: list[tuple[int, _Entry]] = []   # (index of its response, entry)
        for entry in batch:
            if entry.once:
                # Compare "equal" in the guard, ops in its failure branch: etcd fails a value
                # comparison with a missing key, and the key is missing before its first record.
                first = entry.ops[0]
                guarded.append((len(ops), entry))
                ops.append(txn.txn([txn.value(first.key) == first.value], [], entry.ops))
            else:
                ops.extend(entry.ops)
        try:
            ok, responses = self._etcd.txn(self._compare, ops, [])
        except EtcdError as exc:
            return exc, []
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the writer silently
            log.exception("group commit: unexpected error")
            return EtcdError(f"unexpected error writing to etcd: {exc!r}"), []
        if not ok:
            return NotLeader("the leader key's create revision is no longer our epoch"), []
        return None, [entry for i, entry in guarded if responses[i].response_txn.succeeded]

    def _count_errors(self, failed: list[Exception]) -> None:
        with self._lock:
            self.write_errors += len(failed)
        log.error("group commit: %d write(s) failed: %s", len(failed), failed[0])
        if self.on_error is not None:
            for err in failed:
                try:
                    self.on_error(err)
                except Exception:  # noqa: BLE001
                    log.exception("group commit: on_error failed")


def _fail(future: Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _failed_future(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future
