"""Which ready task runs on which free core: a pure function of plain data.

Fair share (docs/design.md section 1): the cores are split evenly between the
builds that have work. Cores are handed out one at a time to the build that
holds the fewest (cores in use + cores granted in this round), ties going to
the build submitted first; a build with no ready task left, or at its
max_cores_per_build cap, drops out and leaves its share to the others. This
is water-filling, so a build with fewer ready tasks than its share never
holds cores another build could use. Running tasks are never preempted: a
build over its share just gets nothing until the others catch up.

Each granted core is taken from the agent with the most free cores (ties by
name), which spreads work over the farm, unless the task names a preferred
agent with a free core: a dependant released by its dependency's result
prefers the agent that ran the dependency (its work directory is warm there,
and its Assignment follows that result's ack on the same stream). One task
uses one core. A build marked `together` (cores lent to a `baton run` build,
coordinator/runtime/lending.py) keeps taking cores from the agent its
previous core of this round came from while that agent has a free one: one
grant per agent with several slots instead of several grants, so one Lend
message instead of several, and one helper for the initiator to dial.
"""
from __future__ import annotations

import dataclasses
import heapq
from typing import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class BuildDemand:
    """A build as the scheduler sees it: ready tasks in the order they
    should start, and how many of its tasks hold a core right now."""

    build_id: str
    ready: Sequence[str]
    in_use: int = 0
    together: bool = False   # its cores of one round from one agent while it has free ones


@dataclasses.dataclass(frozen=True)
class Placement:
    build_id: str
    task_id: str
    agent: str


def schedule(builds: Sequence[BuildDemand], free_cores: Mapping[str, int],
             max_cores_per_build: int = 0,
             prefer: Mapping[tuple[str, str], str] | None = None) -> list[Placement]:
    """Placements for this round. `builds` in submission order; `free_cores`
    only for agents that may get work; max_cores_per_build 0 means no cap;
    `prefer` maps (build id, task id) to the agent that task should go to if
    it has a free core."""
    free = {name: n for name, n in free_cores.items() if n > 0}
    if not free:
        return []
    prefer = prefer or {}
    # Most free cores first; an entry is stale (skipped) once its count changed.
    agents = [(-n, name) for name, n in free.items()]
    heapq.heapify(agents)
    left = sum(free.values())
    # (cores held, submission order, index into ready, demand)
    candidates = []
    for order, build in enumerate(builds):
        limit = len(build.ready)
        if max_cores_per_build > 0:
            limit = min(limit, max_cores_per_build - build.in_use)
        if limit > 0:
            candidates.append((build.in_use, order, 0, limit))
    heapq.heapify(candidates)
    placements: list[Placement] = []
    last: dict[int, str] = {}   # a `together` build's previous agent this round
    while candidates and left:
        held, order, taken, limit = heapq.heappop(candidates)
        build = builds[order]
        task_id = build.ready[taken]
        agent = prefer.get((build.build_id, task_id))
        if build.together and not free.get(agent):
            agent = last.get(order)
        if not free.get(agent):
            while True:
                neg_free, agent = heapq.heappop(agents)
                if free.get(agent) == -neg_free:
                    break
        free[agent] -= 1
        left -= 1
        if free[agent]:
            heapq.heappush(agents, (-free[agent], agent))
        placements.append(Placement(build.build_id, task_id, agent))
        if build.together:
            last[order] = agent
        if taken + 1 < limit:
            heapq.heappush(candidates, (held + 1, order, taken + 1, limit))
    return placements
