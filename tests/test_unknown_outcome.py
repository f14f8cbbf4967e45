"""Writes whose outcome the leader never learns: applied by etcd, their answer lost.

A TCP proxy between the leader's etcd client and a real etcd forwards the
requests and holds the answers ("mute"), so a transaction is applied while
its client times out (EtcdUnavailable: outcome unknown). The leader retries
such a write; the retry must not apply it a second time: every task's
attempt ends exactly once in etcd's history (docs/design.md section 1;
section 3 rule 5), which bench/history_check.py checks.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from bench.history_check import check_history, task_records
from coordinator.config import Timings
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from coordinator.runtime.store import GroupCommit
from lease.client import connect
from lease.election import Fence
from lease.errors import EtcdUnavailable
from tests.harness.ports import free_port
from tests.harness.wait import wait_until
from cluster.keys import encode
from tests.test_runtime import TOKEN, Leadership, StubAgent, record, runtime_agents, status, submit


@pytest.fixture
def muted(etcd_url, tcp_proxy):
    """(proxy, client): an etcd client whose every call goes through a TcpProxy."""
    target = urlsplit(etcd_url)
    proxy = tcp_proxy(target.hostname, target.port)
    client = connect(proxy.url(), timeout=1.0)
    yield proxy, client
    client.close()


def history_of(etcd, key: str) -> list[int]:
    """The revisions at which key was written (all of them: the history is not compacted)."""
    revisions, revision = [], etcd.get(key)[1].mod_revision
    while revision:
        revisions.append(revision)
        resp = etcd.range_response(key, revision=revision - 1)
        revision = resp.kvs[0].mod_revision if resp.kvs else 0
    return revisions[::-1]


def test_a_retried_write_whose_first_try_landed_is_not_applied_again(etcd, keys, muted):
    proxy, through = muted
    ok, _ = etcd.txn([etcd.ops.create(keys.leader) == 0], [etcd.ops.put(keys.leader, b'{"name":"t"}')])
    assert ok
    store = GroupCommit(through, Fence(through, keys.leader, etcd.get(keys.leader)[1].create_revision))
    key = keys.task("b1", "t1")
    ops = [through.ops.put(key, b'{"state":"done","attempt":1}'), through.ops.put(keys.root + "other", b"x")]
    try:
        through.get(key)   # connected: a muted link would hold the handshake's answer too
        proxy.set_mode("mute")
        with pytest.raises(EtcdUnavailable):
            store.submit(ops, once=True).result(10)
        assert etcd.get(key)[0] is not None, "the muted transaction was not applied"
        proxy.set_mode("pass")
        again = wait_until(lambda: _settled(store.submit(ops, once=True)), 15, message="the retry to commit")
        assert again == "committed"
        assert store.already_applied == 1
        # A write of something else to the same key is applied as usual.
        store.submit([through.ops.put(key, b'{"state":"running","attempt":2}')], once=True).result(10)
    finally:
        store.close()
    assert len(history_of(etcd, key)) == 2 and len(history_of(etcd, keys.root + "other")) == 1


def _settled(future) -> str | None:
    """"committed" once the future committed; None (try again) when etcd was unavailable."""
    try:
        future.result(10)
    except EtcdUnavailable:
        return None
    return "committed"


@pytest.fixture
def leading(etcd, keys, muted):
    """(runtime, its agent service's address, epoch): a leader whose etcd client is `muted`'s."""
    _, through = muted
    leadership = Leadership(etcd, keys)
    runtime = Runtime(through, keys, "c1", Timings(ttl=2, grace=1.5), agent_token=TOKEN)
    address = f"127.0.0.1:{free_port()}"
    server = AioAgentServer(runtime, address)
    server.start()
    runtime.start(leadership.epoch)
    yield runtime, address, leadership.epoch
    runtime.stop("test over")
    server.stop(None)
    leadership.close()


def test_a_result_whose_write_timed_out_after_it_landed_is_recorded_once(etcd, keys, muted, leading):
    proxy, _ = muted
    runtime, address, epoch = leading
    agent = StubAgent(etcd, keys, address, "a1", epoch)
    try:
        agent.wait("welcome")
        submit(etcd, keys, "b1", [{"id": "t1"}])
        agent.wait("assign")
        proxy.set_mode("mute")
        agent.send_result(("b1", "t1", 1))
        # etcd applies the result; the leader hears only its own timeout.
        wait_until(lambda: record(etcd, keys, "b1", "t1")["state"] == "done", 15, message="the result in etcd")
        wait_until(lambda: runtime.store_write_errors >= 1, 15, message="the result's write to time out")
        proxy.set_mode("pass")
        ack = agent.wait("ack", timeout=30)
        assert ack.recorded
        wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 15, message="the build to end")
    finally:
        agent.close()
    assert len(history_of(etcd, keys.task("b1", "t1"))) == 2   # running, then done: once each
    verdict = check_history(etcd, keys, since=epoch - 1)
    assert verdict.ok, verdict.problems
    ends = [rec for _, rec in task_records(verdict.events, keys)[("b1", "t1")] if rec["state"] == "done"]
    assert len(ends) == 1


def test_a_running_record_that_landed_unseen_is_not_placed_again_under_its_attempt(etcd, keys, muted, leading):
    # An attempt names one placement: were it placed twice (say a1, then a2), a result of
    # the first placement's agent would count for the second's, and the history could no
    # longer tell which run an attempt was.
    proxy, _ = muted
    runtime, address, epoch = leading
    agent = None
    try:
        submit(etcd, keys, "b1", [{"id": "t1"}])
        wait_until(lambda: status(etcd, keys, "b1").get("state"), 15, message="the build loaded")
        etcd.put(keys.agent("a1"), encode({"name": "a1", "cores": 1}), lease=etcd.lease_grant(30))
        wait_until(lambda: runtime_agents(etcd, keys) == ["a1"], 15, message="a1's presence seen")
        proxy.set_mode("mute")
        agent = StubAgent(etcd, keys, address, "a1", epoch, cores=1, present=False)
        # The running record lands; the leader hears only its own timeout, and places t1 again.
        wait_until(lambda: (record(etcd, keys, "b1", "t1") or {}).get("state") == "running", 15,
                   message="the running record in etcd")
        wait_until(lambda: runtime.store_write_errors >= 1, 15, message="its write to time out")
        proxy.set_mode("pass")
        assign = agent.wait("assign", timeout=30)
        agent.send_result(("b1", "t1", assign.task.attempt))
        wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 30, message="the build to end")
    finally:
        if agent is not None:
            agent.close()
    verdict = check_history(etcd, keys, since=epoch - 1)
    placed = [(rec["attempt"], rec["agent"]) for _, rec in task_records(verdict.events, keys)[("b1", "t1")]
              if rec["state"] == "running"]
    assert len(placed) >= 2, "the first placement's outcome was unknown: t1 was placed again"
    attempts = [attempt for attempt, _ in placed]
    assert len(set(attempts)) == len(attempts), f"an attempt placed twice: {placed}"
    assert assign.task.attempt == attempts[-1], "the agent runs the last placement"
    assert verdict.ok, verdict.problems


def test_once_submissions_fill_a_transaction_within_etcds_op_limit(etcd, keys):
    # etcd counts a nested transaction's ops against the outer one's limit (128): a `once`
    # submission costs one op more, or a full batch would be refused as too many operations.
    ok, _ = etcd.txn([etcd.ops.create(keys.leader) == 0], [etcd.ops.put(keys.leader, b'{"name":"t"}')])
    assert ok
    seen = []
    store = GroupCommit(etcd, Fence(etcd, keys.leader, etcd.get(keys.leader)[1].create_revision),
                        window=0.3, on_error=seen.append)
    put = etcd.ops.put
    try:
        with pytest.raises(ValueError):
            store.submit([put(f"{keys.root}big/{i}", b"x") for i in range(128)], once=True)
        # 63 + 65 ops: 128, but 129 for etcd; counted so, they go in two transactions.
        futures = [store.submit([put(f"{keys.root}flat/{i}", b"x")]) for i in range(63)]
        futures.append(store.submit([put(f"{keys.root}many/{i}", b"x") for i in range(65)], once=True))
        futures += [store.submit([put(f"{keys.root}one/{i}", b"x")], once=True) for i in range(40)]
        for future in futures:
            assert future.result(10) is None
    finally:
        store.close()
    assert not seen and store.write_errors == 0 and store.already_applied == 0
    # Batched, not refused and then committed one submission at a time.
    assert len({meta.mod_revision for _, meta in etcd.get_prefix(keys.root + "flat/")}) == 1
    assert len(etcd.get_prefix(keys.root + "many/")) == 65
