"""What the API and the build monitor show of a `baton run` build (docs/design.md section 8).

`run_detail` reads the build's spec, status and job records (jobs/<id>/<seq>,
coordinator/runtime/run_records.py) at one revision, plus the cluster events
(cluster/events.py) of the build's time span: the failovers and handbacks the
monitor marks. `since=N` returns only the jobs after seq N, so that a page
polling a build of thousands of jobs fetches only what is new.
"""
from __future__ import annotations

import time

from cluster import records
from cluster.events import list_events
from cluster.keys import Keys, decode, prefix_end
from cluster.records import JobRecord

EVENTS_READ = 200          # the newest events read to find those of the build's span
EVENT_TYPES = ("failover", "handback", "switchover", "leader", "resign")


def _value(raw) -> dict:
    try:
        value = decode(raw) if raw is not None else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_run(spec: dict) -> bool:
    return spec.get("kind") == records.RUN


def run_detail(etcd, keys: Keys, build_id: str, spec: dict, status: dict, since: int = 0) -> dict:
    """The API's document of a run build (GET /api/v1/builds/<id>)."""
    prefix = keys.build_jobs(build_id)
    start = keys.job(build_id, since + 1) if since > 0 else prefix
    job_kvs, = etcd.read_together([(start, prefix_end(prefix))])
    jobs = [j for j in (JobRecord.parse(raw) for raw, _ in job_kvs) if j is not None]
    state = status.get("state", "running")
    ended = state in records.BUILD_ENDED
    started = status.get("started") or spec.get("submitted")
    finished = status.get("finished")
    now = time.time()
    counts = {k: int(status.get(k) or 0) for k in ("total", "done", "failed", "remote", "local")}
    return {
        "id": build_id, "kind": records.RUN, "name": spec.get("name"), "state": state, "ended": ended,
        "command": spec.get("command") or [], "host": spec.get("host"), "user": spec.get("user"),
        "submitted": spec.get("submitted"), "started": started, "finished": finished,
        "exit_code": status.get("exit_code"), "wall": status.get("wall"), "reason": status.get("reason") or "",
        "counts": counts, "total": counts["total"], "now": now, "since": since,
        "jobs": [j.to_dict() for j in jobs], "tasks": [], "cancel": None,
        "events": build_events(etcd, keys, started, finished if ended else None, now),
    }


def build_events(etcd, keys: Keys, started: float | None, finished: float | None, now: float) -> list[dict]:
    """The leadership events (failover, handback...) from the build's start to its end, oldest first."""
    if started is None:
        return []
    until = finished if finished is not None else now
    return [e.to_dict() for e in reversed(list_events(etcd, keys, EVENTS_READ))
            if e.type in EVENT_TYPES and started - 1 <= e.time <= until + 1]

