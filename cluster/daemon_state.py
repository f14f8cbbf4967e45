"""The daemon's live state, shared with the web workers of the same coordinator.

The daemon (HA loop) rewrites a small JSON file every cycle; gunicorn
workers read it to learn whether their coordinator is *acting* as leader
right now (lease renewed within renew_deadline, runtime dispatching) and to
serve /metrics. A file, not etcd, because it is local to one coordinator and
changes every cycle. A file older than max_age counts as "not acting": a
wedged daemon makes its own UI view-only (docs/design.md section 3, rule 3).

Fields: name, role, acting (bool), epoch (int|None), leader (name|None),
updated (unix time), lease_ttl_left (s), lease_renewal_latency (s),
takeovers, failovers, handovers, agents_connected, tasks_dispatched,
tasks_finished, store_write_errors (writes etcd refused or did not answer,
logged by the runtime's store), histograms ({task_duration_seconds, etcd_txn_seconds}: each
{"buckets": [[le, cumulative count], ...], "sum", "count"}), pid, sentence.
"""
from __future__ import annotations

import json
import time
from typing import Any

from cluster.files import write_json_atomically


def write_state(path: str, state: dict[str, Any]) -> None:
    """Replace the state file, stamped with the time of writing."""
    write_json_atomically(path, dict(state, updated=time.time()))


def read_state(path: str | None, max_age: float, now: float | None = None) -> dict[str, Any] | None:
    """The state if the file exists and is younger than max_age seconds, else None."""
    if not path:
        return None
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    if now - float(state.get("updated", 0)) > max_age:
        return None
    return state
