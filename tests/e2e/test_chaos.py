"""A short randomized fault run (bench/chaos.py): a minute of faults drawn from a seed,
then the shared checker over etcd's whole history. The long run is the bench."""
from __future__ import annotations

import os

import pytest

from bench.chaos import report, run
from bench.chaos_faults import KINDS

pytestmark = pytest.mark.slow

# Seed 12 draws every kind of fault within the first minute at ttl 2: a switchover, the
# leader cut off from etcd, paused and killed, the standby paused, an etcd member and
# agents killed.
SEED = int(os.environ.get("BATON_CHAOS_SEED", "12"))


def test_a_minute_of_random_faults_loses_and_doubles_nothing(tmp_path):
    lines: list[str] = []
    result = run(tmp_path, seed=SEED, minutes=1.0, ttl=2, agents=3, quiet=150, out=lines.append)
    report(result, tmp_path / "ran.log", out=lines.append)
    text = "\n".join(lines)
    print(text)
    assert result.verdict.ok, text
    if SEED == 12:
        assert {a.fault.kind for a in result.faults} == set(KINDS), text
    assert result.verdict.builds_ended == result.verdict.builds >= 2, text
    assert result.verdict.agent_runs > 0 and result.failovers >= 2, text
