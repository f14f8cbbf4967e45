"""Cancelling a build, against a real etcd and real gRPC streams (tests/test_runtime.py's
StubAgent): build-cancel/<id> is what the web API writes; the leader acts on it, a new
leader too."""
from __future__ import annotations

from cluster.keys import encode
from tests.harness.wait import wait_until
from tests.test_runtime import farm, leadership, record, status, submit  # noqa: F401 (fixtures)


def ask_cancel(etcd, keys, build_id):
    etcd.put(keys.cancel_of_build(build_id), encode({"user": "test", "time": 0}))


def assert_cancelled(etcd, keys, build_id, task_ids):
    wait_until(lambda: status(etcd, keys, build_id).get("state") == "cancelled", 10,
               message=f"{build_id} ends cancelled")
    for task_id in task_ids:
        rec = record(etcd, keys, build_id, task_id)
        assert rec["state"] == "failed" and rec["result"]["error"] == "cancelled", (task_id, rec)


def test_a_cancelled_build_stops_its_running_tasks_and_never_starts_the_rest(etcd, keys, farm):
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}, {"id": "t3", "deps": ["t1"]}])
    assign = a1.wait("assign")
    assert assign.task.task_id == "t1"
    ask_cancel(etcd, keys, "b1")
    cancel = a1.wait("cancel")
    assert (cancel.task.build_id, cancel.task.task_id, cancel.task.attempt) == ("b1", "t1", 1)
    assert_cancelled(etcd, keys, "b1", ["t1", "t2", "t3"])
    assert record(etcd, keys, "b1", "t1")["agent"] == "a1"
    assert status(etcd, keys, "b1")["failed"] == 3
    # A result that comes anyway (the task ended as the Cancel went out) is not recorded.
    a1.send_result(("b1", "t1", 1))
    wait_until(lambda: a1.acks() == [(("b1", "t1", 1), False)], 10)
    assert record(etcd, keys, "b1", "t1")["result"]["error"] == "cancelled"
    # The core is free again: a later build runs normally.
    submit(etcd, keys, "b2", [{"id": "u1"}])
    a1.wait("assign", 2)
    assert a1.assignments() == [("b1", "t1", 1), ("b2", "u1", 1)]
    a1.send_result(("b2", "u1", 1))
    wait_until(lambda: status(etcd, keys, "b2").get("state") == "done", 10)


def test_a_cancel_heard_before_its_build_is_kept_until_the_build_comes(etcd, keys, farm):
    a1 = farm.agent("a1", cores=1)
    a1.wait("welcome")
    ask_cancel(etcd, keys, "b1")
    # Builds and cancels come through two watches with no order between them:
    # the cancel must have been heard before the build is written, or the
    # build may be heard first and t1 assigned before the cancel stops it.
    wait_until(lambda: "b1" in farm.runtime._dispatcher._cancels_waiting, 10)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    assert_cancelled(etcd, keys, "b1", ["t1"])
    assert a1.of("assign") == []


def test_a_new_leader_finishes_a_cancel_stored_before_it(etcd, keys, farm, leadership):
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}, {"id": "t2"}])
    on_a1 = a1.wait("assign").task
    farm.runtime.stop("handover")
    a1.wait_ended()
    ask_cancel(etcd, keys, "b1")   # while nobody leads
    farm.runtime.start(leadership.renew())
    back = farm.agent("a1", epoch=farm.runtime.epoch, cores=1, present=False, running=[on_a1])
    assert (back.wait("cancel").task.task_id, back.wait("cancel").task.attempt) == ("t1", 1)
    assert_cancelled(etcd, keys, "b1", ["t1", "t2"])
    assert back.of("assign") == []


def test_a_cancel_after_the_build_ended_changes_nothing(etcd, keys, farm):
    a1 = farm.agent("a1", cores=1)
    submit(etcd, keys, "b1", [{"id": "t1"}])
    a1.wait("assign")
    a1.send_result(("b1", "t1", 1))
    wait_until(lambda: status(etcd, keys, "b1").get("state") == "done", 10)
    wait_until(lambda: "b1" in farm.runtime._dispatcher.finished_builds, 10)
    ask_cancel(etcd, keys, "b1")
    ask_cancel(etcd, keys, "b2")   # the same watch, in order: once b2's is seen, so was b1's
    dispatcher = farm.runtime._dispatcher
    wait_until(lambda: "b2" in dispatcher._cancels_waiting, 10)
    assert "b1" not in dispatcher._cancels_waiting
    assert status(etcd, keys, "b1")["state"] == "done" and record(etcd, keys, "b1", "t1")["state"] == "done"
    assert a1.of("cancel") == []

