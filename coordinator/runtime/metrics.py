"""The runtime's process-wide counters and histograms, for /metrics.

They outlive each epoch of leadership (a Dispatcher and its GroupCommit are
made anew for every epoch), so a Prometheus counter never goes back while
the process lives. The daemon writes `Metrics.to_state()` into its state
file (coordinator.presence) and web/metrics.py turns it into histograms.

Cheap on the hot path: an observation is a bisect into fixed buckets and
three additions, made by one thread at a time: task results on the
dispatcher's loop thread, transaction round trips under GroupCommit's own
lock. Readers (the HA loop, once a cycle) take a copy; a copy made during
an observation may be one observation behind in a bucket, never wrong later.
"""
from __future__ import annotations

import bisect

# Upper bounds in seconds: tasks run from a fraction of a second (a compile) to an hour;
# a transaction round trip is a millisecond or two, more under load or during a failover.
TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
TXN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Histogram:
    """Counts per bucket (the last one: above every bound), their sum and count."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_state(self) -> dict:
        """{"buckets": [[le, cumulative count], ...], "sum": s, "count": n} (le +Inf implied by count)."""
        counts = list(self.counts)
        buckets, total = [], 0
        for bound, n in zip(self.bounds, counts):
            total += n
            buckets.append([bound, total])
        return {"buckets": buckets, "sum": self.sum, "count": total + counts[-1]}


class Metrics:
    def __init__(self):
        self.task_duration = Histogram(TASK_BUCKETS)
        self.etcd_txn = Histogram(TXN_BUCKETS)
        self.tasks_finished = 0

    def task_finished(self, duration: float | None) -> None:
        """A task result was recorded durably (the agent's measured run time)."""
        self.tasks_finished += 1
        self.task_duration.observe(max(0.0, float(duration or 0.0)))

    def to_state(self) -> dict:
        return {"tasks_finished": self.tasks_finished,
                "histograms": {"task_duration_seconds": self.task_duration.to_state(),
                               "etcd_txn_seconds": self.etcd_txn.to_state()}}
