"""WatchMux against a real etcd: many watches on one stream, each its own."""
from __future__ import annotations

from urllib.parse import urlsplit

from lease.client import connect
from bench.watch_mux import WatchMux
from tests.harness.etcd import start_single
from tests.harness.wait import wait_until
from tests.test_watcher import Recorder


def test_each_watch_gets_its_own_keys_events_from_its_own_revision(etcd, keys):
    mux = WatchMux(etcd)
    a, b, c = Recorder(), Recorder(), Recorder()
    etcd.put(keys.root + "a", "1")
    past = etcd.revision()
    try:
        wa = mux.watch(keys.root + "a", on_events=a.on_events).start()
        wb = mux.watch(keys.root + "b", on_events=b.on_events).start()
        wait_until(lambda: wa.connected.is_set() and wb.connected.is_set(), 10, message="both created")
        etcd.put(keys.root + "b", "2")
        etcd.put(keys.root + "a", "3")
        etcd.delete(keys.root + "a")
        # A watch added to the open stream later, from a past revision, replays from there.
        mux.watch(keys.root + "a", start_revision=past, on_events=c.on_events).start()
        wait_until(lambda: a.has(("delete", keys.root + "a", None)) and b.summary(), 10)
        assert a.summary() == [("put", keys.root + "a", b"3"), ("delete", keys.root + "a", None)]
        assert b.summary() == [("put", keys.root + "b", b"2")]
        wait_until(lambda: len(c.summary()) == 3, 10, message="the late watch replays history")
        assert c.summary() == [("put", keys.root + "a", b"1"), *a.summary()]
        wb.stop()
        etcd.put(keys.root + "b", "after stop")
        etcd.put(keys.root + "a", "4")
        wait_until(lambda: a.has(("put", keys.root + "a", b"4")), 10)
        assert b.summary() == [("put", keys.root + "b", b"2")], "a stopped watch delivers nothing more"
    finally:
        mux.close()


def test_watches_resume_without_loss_after_a_silent_link_and_resync_after_compaction(etcd, keys, tcp_proxy):
    host, port = urlsplit(etcd.config.endpoints[0]).hostname, urlsplit(etcd.config.endpoints[0]).port
    proxy = tcp_proxy(host, port)
    via_proxy = connect(proxy.url(), timeout=1.0)
    mux = WatchMux(via_proxy, progress_interval=0.3, liveness_timeout=1.0)
    lead, other = Recorder(), Recorder()
    try:
        wl = mux.watch(keys.leader, on_events=lead.on_events).start()
        wo = mux.watch(keys.root + "other", on_events=other.on_events).start()
        wait_until(lambda: wl.connected.is_set() and wo.connected.is_set(), 10)
        proxy.set_mode("blackhole")
        etcd.put(keys.root + "other", "while cut off")
        etcd.put(keys.leader, "gone soon")
        etcd.delete(keys.leader)
        wait_until(lambda: not wl.connected.is_set(), 10, message="the silent link is noticed")
        etcd.compact(etcd.revision())  # the leader's put and delete are history now
        proxy.set_mode("pass")
        wait_until(lambda: other.has(("put", keys.root + "other", b"while cut off")), 20)
        wait_until(lambda: lead.has(("delete", keys.leader, None)), 20, message="the delete, synthesized")
        wait_until(lambda: wl.connected.is_set() and wo.connected.is_set(), 10)
        etcd.put(keys.leader, "new")
        wait_until(lambda: lead.has(("put", keys.leader, b"new")), 10)
        assert other.summary().count(("put", keys.root + "other", b"while cut off")) == 1
    finally:
        mux.close()
        via_proxy.close()


def test_watches_keep_delivering_across_an_etcd_restart(tmp_path):
    member = start_single(tmp_path)
    etcd = connect(member.client_url, timeout=1.0)
    mux = WatchMux(etcd)
    recs = [Recorder() for _ in range(3)]
    try:
        watches = [mux.watch(f"/k{i}", on_events=r.on_events).start() for i, r in enumerate(recs)]
        wait_until(lambda: all(w.connected.is_set() for w in watches), 10)
        etcd.put("/k0", "before")
        wait_until(lambda: recs[0].has(("put", "/k0", b"before")), 5)
        member.restart()
        member.wait_ready()
        wait_until(lambda: all(w.connected.is_set() for w in watches), 20, message="watches created again")
        for i in range(3):
            wait_until(lambda i=i: etcd.put(f"/k{i}", "after"), 10)
        wait_until(lambda: all(r.has((("put", f"/k{i}", b"after"))) for i, r in enumerate(recs)), 10)
        assert recs[0].summary().count(("put", "/k0", b"before")) == 1  # resumed after it, not replayed
    finally:
        mux.close()
        etcd.close()
        member.stop()
