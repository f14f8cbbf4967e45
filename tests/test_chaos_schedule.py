"""bench/chaos_faults.py: a seed reproduces its schedule; time without a leader is counted right."""
from __future__ import annotations

from bench.chaos_faults import KINDS, LeaderLog, schedule


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    assert schedule(12, 600, 2, 4, 3) == schedule(12, 600, 2, 4, 3)
    assert schedule(12, 600, 2, 4, 3) != schedule(13, 600, 2, 4, 3)
    faults = schedule(12, 600, 2, 4, 3)
    assert {f.kind for f in faults} == set(KINDS)
    assert all(a.at + a.hold < b.at for a, b in zip(faults, faults[1:])), "one fault at a time"


def test_time_without_a_leader_counts_a_dead_leaders_key_until_another_epoch():
    log = LeaderLog()
    log.changes = [(0.0, "p1", 5), (10.0, None, 0), (12.0, "b1", 13), (20.0, None, 0), (20.5, "p1", 21)]
    assert log.leaderless(8, 15) == 2.0                      # only the missing key
    assert log.leaderless(8, 15, stale_epoch=5, stale_until=15) == 4.0  # p1 killed at 8
    assert log.leaderless(8, 25, stale_epoch=5, stale_until=9) == 3.5   # p1 paused 8..9
    assert log.at(11) == (None, 0) and log.at(12) == ("b1", 13)
