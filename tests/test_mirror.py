"""The warm mirror of a takeover's starting point, against a real etcd:
what it holds at a revision is what read_starting_point reads there."""
from cluster.keys import encode
from coordinator.runtime.loading import read_snapshot, read_starting_point
from coordinator.runtime.mirror import Mirror
from tests.harness.wait import wait_until


def spec(build_id, n=3):
    return {"id": build_id, "name": build_id, "tasks": [{"id": f"t{i}", "cmd": "true", "deps": []} for i in range(n)]}


def same_starting_point(a, b, keys):
    sa, sb = read_snapshot(a, keys), read_snapshot(b, keys)
    assert sa.finished == sb.finished and sa.cancels == sb.cancels
    assert [(u.spec, u.order, u.records, u.status) for u in sa.unfinished] == \
           [(u.spec, u.order, u.records, u.status) for u in sb.unfinished]
    assert sa.agents == sb.agents and sa.agent_configs == sb.agent_configs and sa.settings == sb.settings


def test_the_mirror_follows_writes_and_drops_finished_builds(etcd, keys):
    etcd.put(keys.build("old"), encode(spec("old")))
    etcd.put(keys.task("old", "t0"), encode({"state": "done", "attempt": 1}))
    etcd.put(keys.agent("a1"), encode({"name": "a1", "cores": 2}))
    mirror = Mirror(etcd, keys).start()
    try:
        wait_until(lambda: mirror.revision > 0, 10, message="the mirror's first read")
        # After its first read: new builds, records, a finished build, settings, an agent leaving.
        etcd.put(keys.build("new"), encode(spec("new")))
        etcd.put(keys.task("new", "t1"), encode({"state": "running", "attempt": 1, "agent": "a1"}))
        etcd.put(keys.status_of_build("old"), encode({"state": "done"}))
        etcd.put(keys.task("old", "t1"), encode({"state": "done", "attempt": 1}))  # late, of a finished build
        etcd.put(keys.settings, encode({"max_cores_per_build": 3}))
        etcd.put(keys.agent_settings("a2"), encode({"disabled": True}))
        etcd.put(keys.cancel_of_build("new"), encode({"user": "admin", "time": 1}))
        etcd.delete(keys.agent("a1"))
        revision = etcd.revision()

        warm = mirror.snapshot(at_least=revision, timeout=10)
        assert warm is not None and warm[1] >= revision
        kvs, _ = warm
        assert not any(k.startswith(keys.build_tasks("old")) for k in kvs), "a finished build's records were kept"
        assert kvs[keys.build("old")].value == b"", "a finished build's spec was kept"
        read, _ = read_starting_point(etcd, keys)
        same_starting_point(kvs, read, keys)
        assert read_snapshot(kvs, keys).cancels == {"new"}, "a cancellation asked for is kept"
        assert mirror.snapshot(at_least=revision + 1000, timeout=0.2) is None, "never ahead of etcd"
    finally:
        mirror.stop()
    assert mirror.snapshot(at_least=0, timeout=0.1) is None, "a stopped mirror gives nothing"


def test_a_takeover_starts_from_the_warm_mirror(etcd, keys, caplog):
    """Runtime.keep_warm while not leading; start(epoch) loads from the mirror
    (no read of etcd) once it has caught up with the epoch, and drops it."""
    import logging

    from coordinator.config import Timings
    from coordinator.runtime.runtime import Runtime
    from tests.test_runtime import Leadership

    etcd.put(keys.build("b1"), encode(spec("b1", 2)))
    runtime = Runtime(etcd, keys, "c1", Timings(ttl=2))
    runtime.keep_warm(True)
    mirror = runtime._mirror
    wait_until(lambda: mirror.revision > 0, 10, message="the mirror's first read")
    etcd.put(keys.task("b1", "t0"), encode({"state": "done", "attempt": 1, "agent": "a1",
                                              "result": {"exit_code": 0}}))
    lead = Leadership(etcd, keys)
    try:
        with caplog.at_level(logging.INFO, logger="coordinator.runtime.dispatcher"):
            runtime.start(lead.epoch)
        assert any("starting point kept warm" in r.getMessage() for r in caplog.records)
        assert runtime._mirror is None
        build = runtime._dispatcher.builds["b1"]
        assert build.tasks["t0"].state == "done" and build.tasks["t1"].state == "ready", \
            "the write made after the mirror's first read is in the starting point"
        wait_until(lambda: not mirror.alive, 10, message="the mirror stopped once leading")
    finally:
        runtime.stop("test over")
        lead.close()


def test_after_leading_the_mirror_refills_later_and_a_takeover_meanwhile_reads_etcd(etcd, keys, caplog,
                                                                                    monkeypatch):
    """A coordinator that just handed over does not re-read the whole starting point
    while the agents move away from it (REFILL_AFTER_LEADING); if it leads again before
    that, it reads etcd at once instead of waiting for a mirror that has not begun."""
    import logging
    import threading

    from coordinator.config import Timings
    from coordinator.runtime import runtime as runtime_module
    from coordinator.runtime.runtime import Runtime
    from tests.test_runtime import Leadership

    monkeypatch.setattr(runtime_module, "REFILL_AFTER_LEADING", 30.0)
    monkeypatch.setattr(runtime_module, "MIRROR_CATCH_UP", 60.0)
    runtime = Runtime(etcd, keys, "c1", Timings(ttl=2))
    lead = Leadership(etcd, keys)
    try:
        runtime.start(lead.epoch)
        runtime.stop("handover")
        runtime.keep_warm(True)
        mirror = runtime._mirror
        assert mirror.alive and mirror.revision == 0, "not read at once after leading"
        etcd.put(keys.build("b1"), encode(spec("b1", 2)))
        epoch = lead.renew()
        with caplog.at_level(logging.INFO, logger="coordinator.runtime.dispatcher"):
            starting = threading.Thread(target=runtime.start, args=(epoch,), daemon=True)
            starting.start()
            starting.join(10)
            assert not starting.is_alive(), "the takeover waited for a mirror that had not begun"
        assert any("starting point read" in r.getMessage() for r in caplog.records)
        assert "b1" in runtime._dispatcher.builds
        runtime.stop("handover again")
        monkeypatch.setattr(runtime_module, "REFILL_AFTER_LEADING", 0.2)
        runtime.keep_warm(True)
        refilled = runtime._mirror
        wait_until(lambda: refilled.revision > 0, 10, message="the mirror read once the pause was over")
    finally:
        runtime.keep_warm(False)
        runtime.stop("test over")
        lead.close()
