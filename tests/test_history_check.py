"""The shared history checker (bench/history_check.py) on a real etcd: it passes a clean
history and finds each fault it claims to find."""
from __future__ import annotations

import pytest

from bench.history_check import HistoryCompacted, check_history
from cluster.keys import encode
from lease.election import Fence


class Writer:
    """Plays a coordinator: takes the leader key, writes fenced records, resigns."""

    def __init__(self, etcd, keys):
        self.etcd, self.keys = etcd, keys

    def lead(self, name: str) -> Fence:
        ok, responses = self.etcd.txn([self.etcd.ops.create(self.keys.leader) == 0],
                                      [self.etcd.ops.put(self.keys.leader, encode({"name": name}))])
        assert ok
        return Fence(self.etcd, self.keys.leader, responses[0].response_put.header.revision)

    def task(self, fence: Fence, name: str, task: str, state: str, attempt: int = 1, agent: str = "a1",
             epoch: int | None = None) -> None:
        record = {"state": state, "attempt": attempt, "agent": agent, "epoch": epoch or fence.epoch,
                  "coordinator": name}
        if state != "running":
            record["result"] = {"exit_code": 0}
        fence.commit([self.etcd.ops.put(self.keys.task("b1", task), encode(record))])

    def build(self, fence: Fence, tasks: list[str], state: str) -> None:
        fence.commit([self.etcd.ops.put(self.keys.build("b1"), encode({"id": "b1", "tasks": [{"id": t} for t in tasks]})),
                      self.etcd.ops.put(self.keys.status_of_build("b1"), encode({"state": state}))])

    def resign(self, fence: Fence) -> None:
        fence.commit([self.etcd.ops.delete(self.keys.leader)])


@pytest.fixture
def writer(etcd, keys):
    return Writer(etcd, keys)


def clean_history(w: Writer) -> None:
    f1 = w.lead("p1")
    w.build(f1, ["t1", "t2"], "running")
    w.task(f1, "p1", "t1", "running")
    w.task(f1, "p1", "t1", "done")
    w.task(f1, "p1", "t2", "running")
    w.resign(f1)
    f2 = w.lead("b1")
    w.task(f2, "b1", "t2", "done")
    w.build(f2, ["t1", "t2"], "done")


def test_a_clean_history_passes(etcd, keys, writer):
    since = etcd.revision()
    clean_history(writer)
    verdict = check_history(etcd, keys, since)
    assert verdict.ok, verdict.problems
    assert [(e.holder, e.end is None) for e in verdict.epochs] == [("p1", False), ("b1", True)]
    assert verdict.ends == {("b1", "t1"): 1, ("b1", "t2"): 1}
    assert verdict.signed_writes == 4 and verdict.builds_ended == 1


def test_a_record_of_an_ended_epoch_is_a_stale_write(etcd, keys, writer):
    since = etcd.revision()
    f1 = writer.lead("p1")
    writer.resign(f1)
    f2 = writer.lead("b1")
    writer.task(f2, "p1", "t1", "running", epoch=f1.epoch)  # labelled with p1's old epoch
    problems = check_history(etcd, keys, since, builds_must_end=False).problems
    assert len(problems) == 1 and "stale write" in problems[0]


def test_a_write_outside_every_epoch_and_a_second_holder_are_found(etcd, keys, writer):
    since = etcd.revision()
    f1 = writer.lead("p1")
    etcd.put(keys.leader, encode({"name": "b1"}))  # the same epoch (create revision) now names b1
    writer.resign(Fence(etcd, keys.leader, f1.epoch))
    etcd.put(keys.settings, encode({}))  # unfenced: nobody leads
    problems = check_history(etcd, keys, since, builds_must_end=False).problems
    assert any("two holders" in p for p in problems)
    assert any("outside every epoch" in p for p in problems)


def test_an_attempt_ended_twice_and_a_build_not_ended_are_found(etcd, keys, writer):
    since = etcd.revision()
    f1 = writer.lead("p1")
    writer.build(f1, ["t1"], "running")
    writer.task(f1, "p1", "t1", "done")
    writer.task(f1, "p1", "t1", "done")
    problems = check_history(etcd, keys, since).problems
    assert any("attempt 1 written again" in p for p in problems)
    assert any("did not end" in p for p in problems)


def test_an_attempt_placed_twice_is_found(etcd, keys, writer):
    # A running write whose outcome was unknown may have landed: the task is placed
    # again under a new attempt (coordinator/runtime/state.py unassign), never the same one.
    since = etcd.revision()
    f1 = writer.lead("p1")
    writer.task(f1, "p1", "t1", "running", agent="a1")
    writer.task(f1, "p1", "t1", "running", attempt=2, agent="a2")
    assert check_history(etcd, keys, since, builds_must_end=False).ok
    writer.task(f1, "p1", "t1", "running", attempt=2, agent="a1")
    problems = check_history(etcd, keys, since, builds_must_end=False).problems
    assert len(problems) == 1 and "attempt 2 placed again" in problems[0]


def test_a_writer_other_than_the_holder_is_found(etcd, keys, writer):
    since = etcd.revision()
    f1 = writer.lead("p1")
    writer.task(f1, "b1", "t1", "running")  # b1's name under p1's epoch
    problems = check_history(etcd, keys, since, builds_must_end=False).problems
    assert len(problems) == 1 and "written by b1 under epoch" in problems[0]


def test_an_agent_run_without_a_committed_assignment_is_found(etcd, keys, writer, tmp_path):
    since = etcd.revision()
    f1 = writer.lead("p1")
    writer.task(f1, "p1", "t1", "running", agent="a1")
    log = tmp_path / "a1.log"
    log.write_text(f"x INFO agent.core: running task b1/t1#1 for p1 (epoch {f1.epoch})\n"
                   f"x INFO agent.core: running task b1/t2#1 for p1 (epoch {f1.epoch})\n")
    verdict = check_history(etcd, keys, since, builds_must_end=False, agent_logs={"a1": log})
    assert verdict.agent_runs == 2
    assert len(verdict.problems) == 1 and "b1/t2#1" in verdict.problems[0]


def test_compacted_history_is_an_error_not_a_fallback(etcd, keys, writer):
    since = etcd.revision()
    clean_history(writer)
    etcd.compact(etcd.revision())
    with pytest.raises(HistoryCompacted):
        check_history(etcd, keys, since)
