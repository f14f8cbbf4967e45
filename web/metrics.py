"""/metrics: Prometheus exposition through prometheus_client.

A custom collector over what the UI already reads: the daemon's state file
(counters and gauges the HA loop and the runtime keep, cumulative
histograms, the daemon's pid for process metrics) and one cluster snapshot
from etcd (agents by state, builds by state, queued tasks). Nothing is
counted in the web worker itself: gunicorn runs several workers, and each
would count a different share.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector

from web.cluster_view import BUILD_STATES, Snapshot, agent_rows, build_counts

AGENT_STATES = ("offline", "unsubscribed", "disabled", "idle", "busy")

# (metric, kind, help, state-file field)
STATE_METRICS = (
    ("baton_epoch", "gauge", "epoch (leader key create revision) this coordinator acts with, 0 when not acting",
     "epoch"),
    ("baton_takeovers", "counter", "times this coordinator began leading", "takeovers"),
    ("baton_failovers", "counter", "takeovers after the leader was lost (not planned)", "failovers"),
    ("baton_crash_revocations", "counter",
     "leases of crashed leaders this coordinator revoked (crash_detection): the leader's connection broke "
     "and its port refused a new one", "revocations"),
    ("baton_handbacks", "counter", "planned handovers this coordinator made as leader", "handovers"),
    ("baton_agents_connected", "gauge", "agents with a stream to this coordinator", "agents_connected"),
    ("baton_tasks_dispatched", "counter", "tasks this coordinator dispatched", "tasks_dispatched"),
    ("baton_tasks_finished", "counter", "task results this coordinator recorded", "tasks_finished"),
    ("baton_store_write_errors", "counter", "leader writes etcd refused or did not answer (see the log)",
     "store_write_errors"),
    ("baton_lease_ttl_left_seconds", "gauge", "seconds until this coordinator's lease could expire",
     "lease_ttl_left"),
    ("baton_lease_renewal_latency_seconds", "gauge", "duration of the last lease renewal",
     "lease_renewal_latency"),
)

# Histograms the daemon keeps cumulatively in its state file:
# {"buckets": [[upper_bound, cumulative_count], ...], "sum": s, "count": n}.
STATE_HISTOGRAMS = (
    ("baton_task_duration_seconds", "how long tasks ran on their agents", "task_duration_seconds"),
    ("baton_etcd_txn_seconds", "etcd transaction round trips of the leader's store", "etcd_txn_seconds"),
)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


class BatonCollector:
    """Collects on each scrape; `read_state(fresh_only)` and `snapshot()` are injected."""

    def __init__(self, name: str, read_state: Callable[[bool], dict | None],
                 snapshot: Callable[[], Snapshot | None]):
        self.name = name
        self.read_state = read_state
        self.snapshot = snapshot

    def collect(self) -> Iterable:
        fresh = self.read_state(True)
        # Counters stay meaningful from an old file; "acting" only from a fresh one.
        last = self.read_state(False) or {}
        acting = bool(fresh and fresh.get("acting"))
        yield GaugeMetricFamily("baton_is_leader", "1 when this coordinator acts as leader", value=int(acting))
        for name, kind, help_text, field in STATE_METRICS:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help_text, value=_number(last.get(field)))
        histograms = last.get("histograms") or {}
        for name, help_text, field in STATE_HISTOGRAMS:
            h = histograms.get(field)
            if not isinstance(h, dict):
                continue
            buckets = [(("+Inf" if math.isinf(_number_or_inf(le)) else repr(float(le))), int(count))
                       for le, count in h.get("buckets", [])]
            if not buckets or buckets[-1][0] != "+Inf":
                buckets.append(("+Inf", int(h.get("count", 0))))
            yield HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=_number(h.get("sum")))
        snap = self.snapshot()
        if snap is None:
            return
        agents = GaugeMetricFamily("baton_agents", "known agents by state", labels=["state"])
        counts = {state: 0 for state in AGENT_STATES}
        for row in agent_rows(snap):
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        for state, n in counts.items():
            agents.add_metric([state], n)
        yield agents
        builds = GaugeMetricFamily("baton_builds", "builds by state", labels=["state"])
        for state, n in build_counts(snap).items():
            if state in BUILD_STATES:
                builds.add_metric([state], n)
        yield builds
        queued = sum(max(0, int(_number(s.get("total"))) - int(_number(s.get("done"))) - int(_number(s.get("failed")))
                         - int(_number(s.get("running"))))
                     for s in snap.build_status.values() if s.get("state") in ("queued", "running"))
        yield GaugeMetricFamily("baton_tasks_queued", "tasks of unfinished builds waiting for a core", value=queued)


def _number_or_inf(value: Any) -> float:
    if value in ("+Inf", "inf", float("inf")):
        return math.inf
    return float(value)


def exposition(name: str, read_state: Callable[[bool], dict | None],
               snapshot: Callable[[], Snapshot | None]) -> bytes:
    """The text a scrape gets: Baton's metrics and the daemon's process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatonCollector(name, read_state, snapshot))
    state = read_state(False) or {}
    pid = state.get("pid")
    if isinstance(pid, int) and pid > 0:
        # The daemon's own process (same host), not this web worker's.
        ProcessCollector(namespace="baton_daemon", pid=lambda: pid, registry=registry)
    return generate_latest(registry)
