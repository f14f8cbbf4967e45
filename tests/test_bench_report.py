"""bench/failover_report.py reports only what it measured."""
from __future__ import annotations

import types

from bench.failover_report import report, targets_verdict


def test_a_target_without_samples_is_not_measured_not_met():
    assert targets_verdict([], [], audited=True) == "met"
    assert "not measured: switchover" in targets_verdict([], ["switchover"], audited=True)
    assert targets_verdict([], [], audited=False) == "tasks not audited"


def test_no_switchovers_prints_no_met(capsys):
    args = types.SimpleNamespace(ttl=2, json=False, agents=4, pools=1, task_seconds=1.0, tls=False,
                                 max_cores_per_build=0, build_tasks=10)
    trial = {"leads": 1.0, "agents": 1.5, "streams": 1.4, "median_agent": 1.2, "dispatch": 1.6,
             "handback_leads": 0.1, "handback": 0.2, "handback_streams": 0.2}
    results = {"failover": [trial], "switchover": [], "switchback": []}
    check = {"tasks": 10, "exactly_once": 10, "lost": 0, "twice": 0, "unknown": 0, "examples": []}
    report(args, results, check, 10.0, 1, [])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "-> met" not in last and "not measured: switchover p1->b1: request -> all agents" in last
