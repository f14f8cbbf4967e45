"""Watcher against a real etcd: events, history, restarts, compaction, a dead link, TLS."""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

from lease import watcher as watcher_module
from lease.client import connect
from lease.watcher import KV, WatchEvent, Watcher
from tests.harness.etcd import start_single
from tests.harness.wait import wait_until


class Recorder:
    """Collects what a Watcher delivers, thread-safely."""

    def __init__(self):
        self.events: list[WatchEvent] = []
        self.resets: list[tuple[dict, int]] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()

    def on_events(self, events):
        with self._lock:
            self.events.extend(events)

    def on_reset(self, current, revision):
        with self._lock:
            self.resets.append((current, revision))

    def on_error(self, exc):
        with self._lock:
            self.errors.append(exc)

    def summary(self):
        with self._lock:
            return [(e.type, e.key, e.value) for e in self.events]

    def has(self, *items):
        return all(i in self.summary() for i in items)


def watch(etcd, key, rec, **kw) -> Watcher:
    w = Watcher(etcd, key, on_events=rec.on_events, on_error=rec.on_error, **kw).start()
    wait_until(w.connected.is_set, timeout=10, message="watch connected")
    return w


def test_prefix_watch_delivers_puts_and_deletes_in_order(etcd, keys):
    rec = Recorder()
    w = watch(etcd, keys.root, rec, prefix=True)
    try:
        etcd.put(keys.root + "a", "1")
        etcd.put(keys.root + "b", "2")
        etcd.put(keys.root[:-1] + "x", "outside the prefix")
        etcd.delete(keys.root + "a")
        wait_until(lambda: len(rec.events) >= 3, timeout=5)
        assert rec.summary() == [("put", keys.root + "a", b"1"), ("put", keys.root + "b", b"2"),
                                 ("delete", keys.root + "a", None)]
        assert w.last_revision == rec.events[-1].mod_revision
        assert rec.errors == []
    finally:
        w.stop()
    assert not w.connected.is_set()


def test_watch_from_a_past_revision_replays_history(etcd, keys):
    first = etcd.put(keys.leader, "one").header.revision
    etcd.put(keys.leader, "two")
    rec = Recorder()
    w = watch(etcd, keys.leader, rec, start_revision=first)
    try:
        wait_until(lambda: rec.has(("put", keys.leader, b"one"), ("put", keys.leader, b"two")), timeout=5)
    finally:
        w.stop()


def test_compacted_start_revision_resyncs_with_synthesized_events(etcd, keys):
    etcd.put(keys.root + "gone", "x")
    start = etcd.put(keys.root + "kept", "old").header.revision
    etcd.delete(keys.root + "gone")
    etcd.put(keys.root + "kept", "new")
    etcd.compact(etcd.revision())
    rec = Recorder()
    w = Watcher(etcd, keys.root, prefix=True, start_revision=start, on_events=rec.on_events).start()
    try:
        # Compacted history cannot be replayed: the current value comes instead.
        wait_until(lambda: rec.has(("put", keys.root + "kept", b"new")), timeout=10)
        etcd.put(keys.root + "after", "y")
        wait_until(lambda: rec.has(("put", keys.root + "after", b"y")), timeout=5)
        assert ("put", keys.root + "kept", b"old") not in rec.summary()
    finally:
        w.stop()


def test_compaction_hiding_a_delete_of_a_key_seen_before_the_watch_synthesizes_it(etcd, keys):
    etcd.put(keys.leader, "old leader")
    start = etcd.revision() + 1
    etcd.delete(keys.leader)
    etcd.put(keys.root + "later", "x")
    etcd.compact(etcd.revision())
    rec = Recorder()
    w = Watcher(etcd, keys.leader, start_revision=start, on_events=rec.on_events).start()
    try:
        wait_until(lambda: rec.has(("delete", keys.leader, None)), timeout=10)
    finally:
        w.stop()


def test_compaction_while_disconnected_calls_on_reset_and_resumes(etcd, keys, tcp_proxy):
    """The watcher is cut off, etcd moves on and compacts; on reconnect the
    watcher re-reads (on_reset) and resumes from that read's revision."""
    host, port = urlsplit(etcd.config.endpoints[0]).hostname, urlsplit(etcd.config.endpoints[0]).port
    proxy = tcp_proxy(host, port)
    via_proxy = connect(proxy.url(), timeout=1.0)
    rec = Recorder()
    w = Watcher(via_proxy, keys.root, prefix=True, on_events=rec.on_events, on_reset=rec.on_reset,
                on_error=rec.on_error).start()
    try:
        wait_until(w.connected.is_set, timeout=10)
        etcd.put(keys.root + "a", "1")
        wait_until(lambda: rec.has(("put", keys.root + "a", b"1")), timeout=5)
        proxy.set_mode("drop")
        wait_until(lambda: not w.connected.is_set(), timeout=10, message="watcher notices the cut")
        etcd.put(keys.root + "a", "2")
        etcd.put(keys.root + "b", "3")
        compacted = etcd.revision()
        etcd.compact(compacted)
        proxy.set_mode("pass")
        wait_until(lambda: rec.resets, timeout=15, message="on_reset after compaction")
        current, revision = rec.resets[0]
        assert revision >= compacted
        assert {k: kv.value for k, kv in current.items()} == {keys.root + "a": b"2", keys.root + "b": b"3"}
        assert all(isinstance(kv, KV) for kv in current.values())
        etcd.put(keys.root + "c", "4")
        wait_until(lambda: rec.has(("put", keys.root + "c", b"4")), timeout=10)
        assert rec.errors, "the outage was reported through on_error"
    finally:
        w.stop()
        via_proxy.close()


def test_blackholed_link_is_detected_and_the_watch_resumes_without_loss(etcd, keys, tcp_proxy):
    host, port = urlsplit(etcd.config.endpoints[0]).hostname, urlsplit(etcd.config.endpoints[0]).port
    proxy = tcp_proxy(host, port)
    via_proxy = connect(proxy.url(), timeout=1.0)
    rec = Recorder()
    w = watch(via_proxy, keys.leader, rec, liveness_timeout=1.0, progress_interval=0.3)
    try:
        proxy.set_mode("blackhole")
        etcd.put(keys.leader, "while cut off")
        # No error arrives on a blackholed TCP link: only our own liveness check can tell.
        wait_until(lambda: not w.connected.is_set() and rec.errors, timeout=10,
                   message="watcher reports the silent link")
        proxy.set_mode("pass")
        wait_until(lambda: rec.has(("put", keys.leader, b"while cut off")), timeout=15)
        wait_until(w.connected.is_set, timeout=10)
    finally:
        w.stop()
        via_proxy.close()


def test_watch_keeps_delivering_across_an_etcd_restart(tmp_path):
    member = start_single(tmp_path)
    etcd = connect(member.client_url, timeout=1.0)
    rec = Recorder()
    try:
        w = watch(etcd, "/k", rec)
        etcd.put("/k", "before")
        wait_until(lambda: rec.has(("put", "/k", b"before")), timeout=5)
        member.restart()
        member.wait_ready()
        wait_until(lambda: rec.errors, timeout=10, message="the restart is reported")
        wait_until(w.connected.is_set, timeout=15, message="watch re-subscribed")
        wait_until(lambda: etcd.put("/k", "after"), timeout=10)
        wait_until(lambda: rec.has(("put", "/k", b"after")), timeout=10)
        assert rec.summary().count(("put", "/k", b"before")) == 1  # resumed after it, not replayed
        w.stop()
    finally:
        etcd.close()
        member.stop()


def test_watch_over_tls(tls_etcd, keys):
    etcd = connect(tls_etcd.client_url, timeout=2.0, **tls_etcd.connect_kwargs())
    rec = Recorder()
    w = watch(etcd, keys.leader, rec)
    try:
        etcd.put(keys.leader, "secure")
        wait_until(lambda: rec.has(("put", keys.leader, b"secure")), timeout=5)
    finally:
        w.stop()
        etcd.close()


def test_a_raising_callback_does_not_end_the_watch(etcd, keys):
    calls = []

    def bad(events):
        calls.extend(events)
        raise RuntimeError("owner bug")

    w = Watcher(etcd, keys.leader, on_events=bad).start()
    try:
        wait_until(w.connected.is_set, timeout=10)
        etcd.put(keys.leader, "1")
        etcd.put(keys.leader, "2")
        wait_until(lambda: len(calls) >= 2, timeout=5)
        assert w.connected.is_set()
    finally:
        w.stop()


def test_watches_on_one_channel_send_one_progress_request_per_interval_between_them(etcd, keys, monkeypatch):
    # A leader holds nine watches on one etcd client; each asking for progress at its own
    # ticks cost ~30 % of an idle coordinator's CPU (bench/cluster_cpu.py). Between them
    # they ask about once an interval: consecutive requests on the channel are spaced.
    asked: list[float] = []
    real = watcher_module.etcdrpc.WatchProgressRequest

    def counted(*args, **kwargs):
        asked.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(watcher_module.etcdrpc, "WatchProgressRequest", counted)
    interval = 0.1
    rec = Recorder()
    watches = [Watcher(etcd, f"{keys.leader}-{i}", on_events=rec.on_events, progress_interval=interval,
                       liveness_timeout=5.0) for i in range(3)]
    for w in watches:
        w.start()
    try:
        wait_until(lambda: all(w.connected.is_set() for w in watches), timeout=10, message="watches connected")
        wait_until(lambda: len(asked) >= 21, timeout=30, message="20 progress requests")
        gaps = [b - a for a, b in zip(asked[:21], asked[1:21])]
        # Each watch alone would ask every interval: three at the same period ask in bursts.
        bunched = [g for g in gaps if g < 0.45 * interval]
        assert len(bunched) <= 2, f"{len(bunched)} of 20 progress requests came right after another: {gaps}"
        assert not rec.errors
    finally:
        for w in watches:
            w.stop()


def test_a_blackholed_link_is_detected_by_every_watch_sharing_its_channel(etcd, keys, tcp_proxy):
    # The watches on one channel share their evidence (one asks for all): a silent link
    # must still end each of them, and each must resume without loss.
    host, port = urlsplit(etcd.config.endpoints[0]).hostname, urlsplit(etcd.config.endpoints[0]).port
    proxy = tcp_proxy(host, port)
    via_proxy = connect(proxy.url(), timeout=1.0)
    recs = [Recorder() for _ in range(3)]
    watches = [watch(via_proxy, f"{keys.leader}-{i}", rec, liveness_timeout=1.0, progress_interval=0.3)
               for i, rec in enumerate(recs)]
    try:
        proxy.set_mode("blackhole")
        for i in range(3):
            etcd.put(f"{keys.leader}-{i}", "while cut off")
        wait_until(lambda: all(not w.connected.is_set() and rec.errors for w, rec in zip(watches, recs)),
                   timeout=10, message="every watch reports the silent link")
        proxy.set_mode("pass")
        for i, rec in enumerate(recs):
            wait_until(lambda: rec.has(("put", f"{keys.leader}-{i}", b"while cut off")), timeout=15)
    finally:
        for w in watches:
            w.stop()
        via_proxy.close()
