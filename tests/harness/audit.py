"""The fault tests' audit: bench/history_check.py over a LocalCluster's etcd history.

`audit(cluster)` replays the cluster's whole etcd history (from
`cluster.history_since`, set by tests/e2e/conftest.py when the cluster
shares an etcd with other tests, else from revision 1), reads every agent's
log for the runs it started, and fails the test with every problem found:
a write outside every epoch or under a stale one, two holders of an epoch,
an attempt ended twice, a build not ended, a run no fenced write assigned,
an agent not on the leader at the end.
"""
from __future__ import annotations

from bench.history_check import Verdict, json_object, check_history


def agent_logs(cluster) -> dict:
    return {name: cluster.dir / "logs" / f"{name}.log" for name in cluster.agents}


def audit(cluster, builds_must_end: bool = True, agents_on_leader: bool = True) -> Verdict:
    """Check the cluster's history (bench/history_check.py); assert no problem; return the verdict."""
    live = [name for name, proc in cluster.agents.items() if proc.alive] if agents_on_leader else []
    verdict = check_history(cluster.etcd(), cluster.keys, since=getattr(cluster, "history_since", 0),
                            builds_must_end=builds_must_end, agent_logs=agent_logs(cluster),
                            agents_on_leader=live)
    assert verdict.ok, verdict.summary() + "\n" + "\n".join(verdict.problems[:40])
    assert verdict.epochs, "no epoch in the history"
    return verdict


def late_writes(verdict: Verdict, keys, epoch: int, after: int) -> list:
    """Writes of signed records (tasks/, runtime, events/) carrying `epoch` at revisions
    after `after` (e.g. the next leader's epoch): a deposed leader's late writes."""
    signed = (keys.tasks, keys.runtime, keys.events)
    return [e for e in verdict.events if e.type == "put" and e.key.startswith(signed) and e.mod_revision > after
            and (json_object(e.value) or {}).get("epoch") == epoch]
