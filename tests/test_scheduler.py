"""Unit tests of the pure scheduler: fair share, the per-build cap, order."""
from collections import Counter

from coordinator.runtime.scheduler import BuildDemand, schedule


def tasks(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def per_build(placements):
    return Counter(p.build_id for p in placements)


def per_agent(placements):
    return Counter(p.agent for p in placements)


def test_nothing_free_or_nothing_ready():
    assert schedule([BuildDemand("b1", tasks("t", 3))], {"a1": 0}) == []
    assert schedule([], {"a1": 4}) == []
    assert schedule([BuildDemand("b1", [])], {"a1": 4}) == []


def test_one_build_takes_every_free_core_in_ready_order():
    out = schedule([BuildDemand("b1", tasks("t", 10))], {"a1": 2, "a2": 3})
    assert [p.task_id for p in out] == tasks("t", 5)
    assert per_agent(out) == {"a1": 2, "a2": 3}


def test_cores_split_evenly_between_builds():
    builds = [BuildDemand("b1", tasks("x", 100)), BuildDemand("b2", tasks("y", 100))]
    out = schedule(builds, {"a1": 4, "a2": 4})
    assert per_build(out) == {"b1": 4, "b2": 4}


def test_a_small_build_leaves_its_share_to_others():
    builds = [BuildDemand("b1", tasks("x", 1)), BuildDemand("b2", tasks("y", 100)),
              BuildDemand("b3", tasks("z", 100))]
    out = schedule(builds, {"a1": 9})
    assert per_build(out) == {"b1": 1, "b2": 4, "b3": 4}


def test_cores_in_use_count_towards_the_share():
    builds = [BuildDemand("b1", tasks("x", 100), in_use=6), BuildDemand("b2", tasks("y", 100), in_use=0)]
    out = schedule(builds, {"a1": 4})
    # b2 catches up first: both end at 6 or fewer for b1.
    assert per_build(out) == {"b2": 4}
    out = schedule(builds, {"a1": 8})
    assert per_build(out) == {"b1": 1, "b2": 7}


def test_ties_go_to_the_earlier_build():
    builds = [BuildDemand("b1", tasks("x", 10)), BuildDemand("b2", tasks("y", 10))]
    out = schedule(builds, {"a1": 3})
    assert per_build(out) == {"b1": 2, "b2": 1}


def test_max_cores_per_build_caps_including_cores_in_use():
    builds = [BuildDemand("b1", tasks("x", 100), in_use=1)]
    out = schedule(builds, {"a1": 8, "a2": 8}, max_cores_per_build=3)
    assert per_build(out) == {"b1": 2}
    assert schedule([BuildDemand("b1", tasks("x", 5), in_use=3)], {"a1": 8}, max_cores_per_build=3) == []


def test_cap_leaves_cores_to_other_builds_and_zero_means_no_cap():
    builds = [BuildDemand("b1", tasks("x", 100)), BuildDemand("b2", tasks("y", 100))]
    out = schedule(builds, {"a1": 10}, max_cores_per_build=2)
    assert per_build(out) == {"b1": 2, "b2": 2}
    assert sum(per_build(schedule(builds, {"a1": 10}, max_cores_per_build=0)).values()) == 10


def test_work_is_spread_over_agents_and_never_exceeds_free_cores():
    out = schedule([BuildDemand("b1", tasks("t", 6))], {"a1": 4, "a2": 4, "a3": 4})
    assert per_agent(out) == {"a1": 2, "a2": 2, "a3": 2}
    out = schedule([BuildDemand("b1", tasks("t", 100))], {"a1": 1, "a2": 3})
    assert per_agent(out) == {"a1": 1, "a2": 3}


def test_each_task_placed_once():
    builds = [BuildDemand(f"b{i}", tasks(f"t{i}-", 7)) for i in range(5)]
    out = schedule(builds, {f"a{i}": 4 for i in range(20)})
    assert len(out) == 35
    assert len({(p.build_id, p.task_id) for p in out}) == 35


def test_a_preferred_agent_with_a_free_core_gets_the_task():
    prefer = {("b1", "t1"): "small"}
    out = schedule([BuildDemand("b1", ["t0", "t1"])], {"big": 4, "small": 1}, prefer=prefer)
    assert {(p.task_id, p.agent) for p in out} == {("t0", "big"), ("t1", "small")}


def test_a_preferred_agent_without_a_free_core_is_ignored_and_counts_stay_right():
    prefer = {("b1", "t0"): "full", ("b1", "t1"): "a1", ("b1", "t2"): "a1"}
    out = schedule([BuildDemand("b1", tasks("t", 6))], {"a1": 1, "a2": 2, "full": 0}, prefer=prefer)
    assert len(out) == 3 and per_agent(out) == {"a1": 1, "a2": 2}
    assert dict((p.task_id, p.agent) for p in out)["t1"] == "a1"


def test_a_together_build_takes_a_rounds_cores_from_one_agent_while_it_has_free_ones():
    # Lent cores (coordinator/runtime/lending.py): one grant on one agent, not one per agent.
    out = schedule([BuildDemand("r", [""] * 3, together=True)], {"a1": 2, "a2": 8, "a3": 8})
    assert per_agent(out) == {"a2": 3}
    out = schedule([BuildDemand("r", [""] * 5, together=True)], {"a1": 3, "a2": 3})
    assert [p.agent for p in out] == ["a1", "a1", "a1", "a2", "a2"]
    # Its preferred agent first (the one it holds a grant on), then the most free one.
    out = schedule([BuildDemand("r", [""] * 3, together=True)], {"a1": 2, "a2": 8}, prefer={("r", ""): "a1"})
    assert [p.agent for p in out] == ["a1", "a1", "a2"]
    # The fair share is the same: interleaved with another build, each gets its share.
    out = schedule([BuildDemand("r", [""] * 8, together=True), BuildDemand("b", tasks("t", 8))], {"a1": 4, "a2": 4})
    assert per_build(out) == {"r": 4, "b": 4}
    # Without `together`, the same build's cores spread over the agents with the most free.
    assert per_agent(schedule([BuildDemand("r", [""] * 3)], {"a1": 2, "a2": 8, "a3": 8})) == {"a2": 2, "a3": 1}
