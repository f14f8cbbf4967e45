"""Unit tests of the pure build model: releasing a dependant early and taking it back."""
from coordinator.runtime.state import ASSIGNING, DONE, READY, WAITING, Build


def chain():
    spec = {"id": "b1", "name": "b1", "tasks": [{"id": "compile", "cmd": "make"},
                                                {"id": "link", "cmd": "ld", "deps": ["compile"]}]}
    build, writes = Build.from_spec(spec, 1, {}, 0.0, 0.0)
    assert writes == []
    return build, build.tasks["compile"], build.tasks["link"]


def test_a_dependant_placed_early_whose_write_failed_waits_again_and_its_attempt_is_used_up():
    build, compile_, link = chain()
    build.assign(compile_, "a1", 1.0)
    compile_.state = "running"
    build.result_taken(compile_)
    assert build.in_use == 0                      # the core is free for the dependant
    build.release_early(link, 2.0)
    assert link.state == READY and "link" in build.ready
    build.assign(link, "a1", 2.0)
    assert link.state == ASSIGNING and link.attempt == 1 and build.in_use == 1
    build.hold_back(link)                         # the shared transaction failed (or landed unseen)
    assert (link.state, link.attempt, link.agent, build.in_use) == (WAITING, 1, None, 0)
    assert "link" not in build.ready and link.waiting_on == 1
    compile_.recording = ("record", [])
    build.finished_task(compile_, {"state": DONE, "attempt": 1}, 3.0, 3.0)
    assert build.in_use == 0 and link.state == READY and link.waiting_on == 0
    build.assign(link, "a2", 4.0)
    assert link.attempt == 2, "attempt 1 may be in etcd already: never placed twice"


def test_a_task_whose_running_record_failed_is_placed_again_under_a_new_attempt():
    build, compile_, _ = chain()
    build.assign(compile_, "a1", 1.0)
    build.unassign(compile_, 1.5)                 # its write failed (or landed unseen)
    assert (compile_.state, compile_.agent, build.in_use) == (READY, None, 0)
    assert next(iter(build.ready)) == "compile"
    build.assign(compile_, "a1", 2.0)
    assert compile_.attempt == 2


def released_early():
    """compile ran and its result is taken (not yet durable); link was released early."""
    build, compile_, link = chain()
    build.assign(compile_, "a1", 1.0)
    compile_.state = "running"
    build.result_taken(compile_)
    build.release_early(link, 2.0)
    return build, compile_, link


def test_an_unplaced_early_release_is_held_back_and_released_again_when_durable():
    build, compile_, link = released_early()
    build.hold_back(link)
    assert link.state == WAITING and "link" not in build.ready and build.in_use == 0
    compile_.recording = ("record", [])
    build.finished_task(compile_, {"state": DONE, "attempt": 1}, 3.0, 3.0)
    assert link.state == READY and build.counts() == {"total": 2, "done": 1, "failed": 0, "running": 0}


def test_the_dependant_placed_with_the_result_keeps_its_core_when_the_result_lands():
    build, compile_, link = released_early()
    build.assign(link, "a1", 2.0)
    compile_.recording = ("record", [])
    build.finished_task(compile_, {"state": DONE, "attempt": 1}, 3.0, 3.0)
    assert link.state == ASSIGNING and link.waiting_on == 0 and build.in_use == 1


def test_a_reloaded_build_counts_each_task_once_whatever_its_records_and_dependencies():
    """What a new leader makes of a build from etcd: done, failed, running, never
    runnable (unknown dependency, cycle, failed dependency) and ready tasks, each
    counted once; a build without dependencies takes the quick path to the same."""
    spec = {"id": "b1", "name": "b1", "tasks": [
        {"id": "ok", "cmd": "true"}, {"id": "bad", "cmd": "false"}, {"id": "busy", "cmd": "sleep 9"},
        {"id": "after-bad", "cmd": "true", "deps": ["bad"]}, {"id": "ghost-dep", "cmd": "true", "deps": ["nope"]},
        {"id": "x", "cmd": "true", "deps": ["y"]}, {"id": "y", "cmd": "true", "deps": ["x"]},
        {"id": "after-ok", "cmd": "true", "deps": ["ok"]}, {"id": "fresh", "cmd": "true"}]}
    records = {"ok": {"state": DONE, "attempt": 1}, "bad": {"state": "failed", "attempt": 1},
               "busy": {"state": "running", "attempt": 2, "agent": "a1"}}
    build, writes = Build.from_spec(spec, 1, records, 0.0, 0.0)
    assert sorted(t.id for t, _ in writes) == ["after-bad", "ghost-dep", "x", "y"]
    assert build.counts() == {"total": 9, "done": 1, "failed": 5, "running": 1}
    assert set(build.ready) == {"after-ok", "fresh"} and build.state == "running"

    flat = {"id": "b2", "name": "b2", "tasks": [{"id": f"t{i}", "cmd": "true"} for i in range(4)]}
    build, writes = Build.from_spec(flat, 2, {"t0": {"state": DONE, "attempt": 1}}, 0.0, 0.0)
    assert writes == [] and build.counts() == {"total": 4, "done": 1, "failed": 0, "running": 0}
    assert list(build.ready) == ["t1", "t2", "t3"] and build.dependants == {f"t{i}": [] for i in range(4)}


def test_a_task_run_again_goes_first_in_its_builds_queue():
    """A task whose agent was lost had started: it must not wait behind the rest of a
    1,000-task build (nor be pushed back again by each takeover that finds it)."""
    spec = {"id": "b1", "name": "b1", "tasks": [{"id": f"t{i}", "cmd": "true"} for i in range(5)]}
    build, _ = Build.from_spec(spec, 1, {}, 0.0, 0.0)
    assert list(build.ready) == ["t0", "t1", "t2", "t3", "t4"]
    for task_id in ("t0", "t1"):
        build.assign(build.tasks[task_id], "a1", 1.0)
        build.tasks[task_id].state = "running"
    build.requeue(build.tasks["t1"], 2.0)
    assert list(build.ready) == ["t1", "t2", "t3", "t4"] and build.in_use == 1
    assert build.tasks["t1"].state == READY and build.tasks["t1"].attempt == 1  # the next assign makes it 2


def test_cancel_ends_every_task_once_except_those_whose_end_is_in_flight():
    """Queued and running tasks end cancelled at once; a task being assigned ends when its
    running record resolves; a task whose result is being written ends with that result."""
    spec = {"id": "b1", "name": "b1", "tasks": [{"id": t, "cmd": "x"} for t in ("run", "assign", "result", "queued")]
            + [{"id": "later", "cmd": "x", "deps": ["run"]}]}
    build, _ = Build.from_spec(spec, 1, {}, 0.0, 0.0)
    t = build.tasks
    for name in ("run", "assign", "result"):
        build.assign(t[name], "a1", 1.0)
    t["run"].state = t["result"].state = "running"
    build.result_taken(t["result"])
    t["result"].recording = ({"state": DONE}, [])
    writes, stop = build.cancel(5.0)
    assert sorted(task.id for task, _ in writes) == ["later", "queued", "run"]
    assert stop == [t["run"]] and not build.ready
    ran = dict((task.id, rec) for task, rec in writes)["run"]
    assert ran["state"] == "failed" and ran["result"]["error"] == "cancelled" and ran["agent"] == "a1"
    assert ran["result"]["duration"] == 4.0 and ran["attempt"] == 1
    assert dict((task.id, rec) for task, rec in writes)["queued"]["agent"] is None
    assert t["assign"].state == ASSIGNING and build.in_use == 1
    assert [task.id for task, _ in build.end_assigning(t["assign"], 6.0)] == ["assign"]
    build.finished_task(t["result"], {"state": DONE, "attempt": 1}, 6.0, 6.0)
    assert build.counts() == {"total": 5, "done": 1, "failed": 4, "running": 0}
    assert build.status_record(7.0)["state"] == "cancelled" and build.over
