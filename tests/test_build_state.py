"""Unit tests of the pure build model: releasing a dependant early and taking it back."""
from coordinator.runtime.state import ASSIGNING, DONE, READY, WAITING, Build


def chain():
    spec = {"id": "b1", "name": "b1", "tasks": [{"id": "compile", "cmd": "make"},
                                                {"id": "link", "cmd": "ld", "deps": ["compile"]}]}
    build, writes = Build.from_spec(spec, 1, {}, 0.0, 0.0)
    assert writes == []
    return build, build.tasks["compile"], build.tasks["link"]


def test_a_dependant_placed_early_whose_write_failed_waits_again_with_its_attempt_unchanged():
    build, compile_, link = chain()
    build.assign(compile_, "a1", 1.0)
    compile_.state = "running"
    build.result_taken(compile_)
    assert build.in_use == 0                      # the core is free for the dependant
    build.release_early(link, 2.0)
    assert link.state == READY and "link" in build.ready
    build.assign(link, "a1", 2.0)
    assert link.state == ASSIGNING and link.attempt == 1 and build.in_use == 1
    build.hold_back(link)                         # the shared transaction failed
    assert (link.state, link.attempt, link.agent, build.in_use) == (WAITING, 0, None, 0)
    assert "link" not in build.ready and link.waiting_on == 1
    compile_.recording = ("record", [])
    build.finished_task(compile_, {"state": DONE, "attempt": 1}, 3.0, 3.0)
    assert build.in_use == 0 and link.state == READY and link.waiting_on == 0


def test_an_unplaced_early_release_is_held_back_and_released_again_when_durable():
    build, compile_, link = chain()
    build.assign(compile_, "a1", 1.0)
    compile_.state = "running"
    build.result_taken(compile_)
    build.release_early(link, 2.0)
    build.hold_back(link)
    assert link.state == WAITING and "link" not in build.ready and build.in_use == 0
    compile_.recording = ("record", [])
    build.finished_task(compile_, {"state": DONE, "attempt": 1}, 3.0, 3.0)
    assert link.state == READY and build.counts() == {"total": 2, "done": 1, "failed": 0, "running": 0}


def test_the_dependant_placed_with_the_result_keeps_its_core_when_the_result_lands():
    build, compile_, link = chain()
    build.assign(compile_, "a1", 1.0)
    compile_.state = "running"
    build.result_taken(compile_)
    build.release_early(link, 2.0)
    build.assign(link, "a1", 2.0)
    compile_.recording = ("record", [])
    build.finished_task(compile_, {"state": DONE, "attempt": 1}, 3.0, 3.0)
    assert link.state == ASSIGNING and link.waiting_on == 0 and build.in_use == 1
