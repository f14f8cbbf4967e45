"""The report of bench/failover.py: every figure's median and p99 (also as a
multiple of the ttl), and the targets of the issue "Backup coordinators"."""
from __future__ import annotations

import json
import statistics

TARGET_AGENTS_P99 = 2.8      # s, failover (b)
TARGET_PLANNED_P99 = 0.300   # s, switchover / handback
LEASE_PATH_MARGIN = 0.8      # s past the ttl, failover (b) when the lease decides (issue 15)


def fault_of(args) -> str:
    return getattr(args, "fault", "kill")   # callers that predate --fault


def agents_target(args) -> float:
    """p99 of failover (b): a silent p1 (stopped, or its host cut off) is left to its lease."""
    return TARGET_AGENTS_P99 if fault_of(args) == "kill" else float(args.ttl) + LEASE_PATH_MARGIN


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (with 20 samples: the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(0.99 * len(ordered) + 0.5)) - 1))]


def summary(name: str, values: list[float], ttl: float) -> dict:
    if not values:
        return {"name": name, "n": 0}
    return {"name": name, "n": len(values), "median": statistics.median(values), "p99": p99(values),
            "max": max(values), "median_ttl": statistics.median(values) / ttl, "p99_ttl": p99(values) / ttl}


def print_row(row: dict) -> None:
    if not row["n"]:
        print(f"  {row['name']:<46} (no samples)")
        return
    print(f"  {row['name']:<46} n={row['n']:<3} median {row['median'] * 1000:8.1f} ms  p99 {row['p99'] * 1000:8.1f} ms"
          f"  (x ttl: {row['median_ttl']:.2f} / {row['p99_ttl']:.2f})")


def targets_verdict(misses: list[str], unmeasured: list[str], audited: bool) -> str:
    """Only what was measured: a target without samples is "not measured", never "met"."""
    parts = []
    if misses:
        parts.append("MISSED: " + "; ".join(misses))
    if unmeasured:
        parts.append("not measured: " + "; ".join(unmeasured))
    if not audited:
        parts.append("tasks not audited")
    return "met" if not parts else " | ".join(parts)


def report(args, results: dict, check: dict | None, elapsed: float, builds: int, errors: list[str]) -> list[str]:
    """Print every figure (of the trials done so far) and the targets; returns the misses."""
    ttl = float(args.ttl)
    fo, so, sb = results["failover"], results["switchover"], results["switchback"]
    rows = [summary("failover (a) kill -> b1 leads", [r["leads"] for r in fo], ttl),
            summary("failover (b) kill -> all agents on b1", [r["agents"] for r in fo], ttl),
            summary("  (b') kill -> all streams welcomed by b1", [r["streams"] for r in fo], ttl),
            summary("  kill -> median agent key on b1", [r["median_agent"] for r in fo], ttl),
            summary("failover (c) kill -> b1's first dispatch", [r["dispatch"] for r in fo], ttl),
            summary("handback: b1 resigns -> p1 leads", [r["handback_leads"] for r in fo], ttl),
            summary("handback: b1 resigns -> all agents on p1", [r["handback"] for r in fo], ttl),
            summary("  b1 resigns -> all streams on p1", [r["handback_streams"] for r in fo], ttl),
            summary("switchover p1->b1: request -> b1 leads", [r["leads"] for r in so], ttl),
            summary("switchover p1->b1: request -> all agents", [r["agents"] for r in so], ttl),
            summary("  request -> all streams on b1", [r["streams"] for r in so], ttl),
            summary("  request -> b1's first dispatch", [r["dispatch"] for r in so], ttl),
            summary("switchover b1->p1: request -> p1 leads", [r["leads"] for r in sb], ttl),
            summary("switchover b1->p1: request -> all agents", [r["agents"] for r in sb], ttl),
            summary("  request -> all streams on p1", [r["streams"] for r in sb], ttl),
            summary("  request -> p1's first dispatch", [r["dispatch"] for r in sb], ttl)]
    by_name = {r["name"]: r for r in rows}
    misses, unmeasured = [], []

    def target(name: str, limit: float) -> None:
        row = by_name[name]
        if not row["n"]:
            unmeasured.append(name)  # no sample: neither met nor missed
        elif row["p99"] > limit:
            misses.append(f"{name}: p99 {row['p99'] * 1000:.0f} ms > {limit * 1000:.0f} ms")
    target("failover (b) kill -> all agents on b1", agents_target(args))
    for name in ("handback: b1 resigns -> all agents on p1", "switchover p1->b1: request -> all agents",
                 "switchover b1->p1: request -> all agents"):
        target(name, TARGET_PLANNED_P99)
    if check and (check["lost"] or check["twice"] or check["unknown"]):
        misses.append(f"tasks lost {check['lost']}, recorded twice {check['twice']}, "
                      f"unknown {check['unknown']} (e.g. {check['examples']})")
    if args.json:
        print(json.dumps({"rows": rows, "audit": check, "trials": results, "elapsed": elapsed,
                          "misses": misses}, indent=2))
    print(f"\n{args.agents} agents (1 core) in {args.pools} processes, tasks of {args.task_seconds:g} s, "
          f"ttl {args.ttl} s, fault {fault_of(args)} (the 'kill' below), tls {args.tls}, max_cores_per_build "
          f"{args.max_cores_per_build}; {len(fo)} failovers, "
          f"{len(so)} switchover round trips; {builds} builds of {args.build_tasks} tasks; "
          f"{elapsed:.0f} s in all")
    for row in rows:
        print_row(row)
    if check:
        print(f"  tasks: {check['tasks']} submitted, {check['exactly_once']} ended exactly once, "
              f"{check['lost']} lost, {check['twice']} recorded twice")
    else:
        print("  tasks: not audited (the run did not finish)")
    print(f"targets: p99 (b) <= {agents_target(args):g} s; handback and switchover p99 <= "
          f"{TARGET_PLANNED_P99 * 1000:.0f} ms -> " + targets_verdict(misses, unmeasured, audited=bool(check)))
    if errors:
        print(f"({len(errors)} watch errors, first: {errors[0]})")
    return misses
