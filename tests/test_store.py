"""GroupCommit against a real etcd: batching, fencing, durability of futures."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from coordinator.runtime.store import GroupCommit
from lease.client import connect
from lease.election import Fence
from lease.errors import EtcdUnavailable, NotLeader
from tests.harness.ports import free_port


def become_leader(etcd, keys) -> int:
    """Create the leader key (create revision == 0 compare) and return its epoch."""
    ok, _ = etcd.txn([etcd.ops.create(keys.leader) == 0], [etcd.ops.put(keys.leader, b'{"name":"t"}')])
    assert ok
    return etcd.get(keys.leader)[1].create_revision


def fence(etcd, keys, epoch):
    return Fence(etcd, keys.leader, epoch)


def revisions_under(etcd, prefix):
    return Counter(meta.mod_revision for _, meta in etcd.get_prefix(prefix))


def test_batches_at_most_128_ops_and_really_batches(etcd, keys):
    epoch = become_leader(etcd, keys)
    store = GroupCommit(etcd, fence(etcd, keys, epoch), window=0.2)
    try:
        futures = [store.submit([etcd.ops.put(f"{keys.root}b/{i:04}", b"x")]) for i in range(300)]
        for f in futures:
            assert f.result(10) is None
    finally:
        store.close()
    per_txn = revisions_under(etcd, keys.root + "b/")
    assert sum(per_txn.values()) == 300
    assert max(per_txn.values()) <= 128
    assert len(per_txn) <= 10, f"300 puts took {len(per_txn)} transactions: not batched"


def test_a_submission_commits_whole_in_one_transaction(etcd, keys):
    epoch = become_leader(etcd, keys)
    store = GroupCommit(etcd, fence(etcd, keys, epoch), window=0.05)
    try:
        small = [store.submit([etcd.ops.put(f"{keys.root}s/{i}", b"x")]) for i in range(100)]
        big = store.submit([etcd.ops.put(f"{keys.root}big/{i:03}", b"y") for i in range(100)])
        for f in small + [big]:
            f.result(10)
        with pytest.raises(ValueError):
            store.submit([etcd.ops.put(f"{keys.root}huge/{i}", b"z") for i in range(129)])
    finally:
        store.close()
    assert len(revisions_under(etcd, keys.root + "big/")) == 1


def test_futures_resolve_only_after_the_write_is_durable(etcd, keys):
    epoch = become_leader(etcd, keys)
    store = GroupCommit(etcd, fence(etcd, keys, epoch))
    seen = []
    done = threading.Event()

    def check(_future, key):
        seen.append(etcd.get(key)[0])
        if len(seen) == 50:
            done.set()

    try:
        for i in range(50):
            key = f"{keys.root}d/{i}"
            store.submit([etcd.ops.put(key, b"v")]).add_done_callback(lambda f, k=key: check(f, k))
        assert done.wait(10)
    finally:
        store.close()
    assert seen == [b"v"] * 50


def test_stale_epoch_is_fenced_out(etcd, keys):
    old_epoch = become_leader(etcd, keys)
    etcd.delete(keys.leader)
    new_epoch = become_leader(etcd, keys)
    assert new_epoch != old_epoch
    calls = []
    store = GroupCommit(etcd, fence(etcd, keys, old_epoch), on_not_leader=lambda: calls.append(1))
    try:
        first = store.submit([etcd.ops.put(keys.root + "f/1", b"x")])
        with pytest.raises(NotLeader):
            first.result(10)
        later = store.submit([etcd.ops.put(keys.root + "f/2", b"x")])
        with pytest.raises(NotLeader):
            later.result(1)
    finally:
        store.close()
    assert calls == [1]
    assert etcd.get_prefix(keys.root + "f/") == []
    # The current leader's store writes fine.
    store = GroupCommit(etcd, fence(etcd, keys, new_epoch))
    try:
        store.submit([etcd.ops.put(keys.root + "f/3", b"x")]).result(10)
    finally:
        store.close()
    assert etcd.get(keys.root + "f/3")[0] == b"x"


def test_same_key_twice_commits_in_order_and_coalesces_when_asked(etcd, keys):
    epoch = become_leader(etcd, keys)
    store = GroupCommit(etcd, fence(etcd, keys, epoch), window=0.2)
    key = keys.root + "status"
    try:
        # Not coalesced: two transactions (etcd refuses one txn with the key twice).
        a = store.submit([etcd.ops.put(key, b"1")])
        b = store.submit([etcd.ops.put(key, b"2")])
        a.result(10), b.result(10)
        assert etcd.get(key)[0] == b"2"
        rev_before = etcd.get(key)[1].mod_revision
        c = store.submit([etcd.ops.put(key, b"3")], coalesce=True)
        d = store.submit([etcd.ops.put(key, b"4")], coalesce=True)
        assert c is d
        d.result(10)
    finally:
        store.close()
    value, meta = etcd.get(key)
    assert value == b"4"
    assert meta.version == 4 - 1  # "3" was never written: replaced while queued
    assert meta.mod_revision > rev_before


def test_flush_waits_for_everything_queued(etcd, keys):
    epoch = become_leader(etcd, keys)
    store = GroupCommit(etcd, fence(etcd, keys, epoch), window=0.05)
    try:
        futures = [store.submit([etcd.ops.put(f"{keys.root}q/{i}", b"x")]) for i in range(200)]
        assert store.flush(10)
        assert all(f.done() for f in futures)
        assert store.pending() == 0
    finally:
        store.close()
    assert len(etcd.get_prefix(keys.root + "q/")) == 200


def test_unreachable_etcd_fails_the_batch_with_etcd_unavailable(keys):
    dead = connect(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    calls = []
    store = GroupCommit(dead, Fence(dead, keys.leader, 5), on_not_leader=lambda: calls.append(1))
    try:
        future = store.submit([dead.ops.put(keys.root + "x", b"x")])
        with pytest.raises(EtcdUnavailable):
            future.result(10)
    finally:
        store.close()
        dead.close()
    assert calls == []



def test_a_write_etcd_refuses_fails_alone_and_is_counted(etcd, keys):
    # docs/design.md section 9: a value over etcd's request limit (1.5 MiB) used to fail its
    # whole batch silently (e.g. the runtime key took the task records batched with it).
    epoch = become_leader(etcd, keys)
    seen = []
    store = GroupCommit(etcd, fence(etcd, keys, epoch), window=0.2, on_error=seen.append)
    try:
        good = [store.submit([etcd.ops.put(f"{keys.root}small/{i}", b"v")]) for i in range(3)]
        bad = store.submit([etcd.ops.put(f"{keys.root}huge", b"x" * (1600 * 1024))])
        for future in good:
            assert future.result(10) is None
        with pytest.raises(Exception):
            bad.result(10)
        assert etcd.get(f"{keys.root}small/2")[0] == b"v" and etcd.get(f"{keys.root}huge")[0] is None
        assert store.write_errors == 1 and len(seen) == 1
    finally:
        store.close()
