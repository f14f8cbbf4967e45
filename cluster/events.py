"""Events: failover, handback, switchover, deselection, leader — each with time,
coordinator and epoch. Written by the leader inside its fenced transactions.

Keys sort by time: events/<unix ns, 20 digits>-<coordinator>.
"""
from __future__ import annotations

import time
from typing import Callable

from cluster.keys import Keys, prefix_end
from cluster.records import EventRecord

EVENT_TYPES = ("leader", "failover", "handback", "switchover", "deselection", "resign")


def event_ops(etcd, keys: Keys, type_: str, coordinator: str, epoch: int | None, detail: str,
              now: Callable[[], float] = time.time) -> list:
    """The put op that records one event (to be committed in a fenced txn)."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    t = now()
    seq = f"{int(t * 1e9):020d}-{coordinator}"
    record = EventRecord(type=type_, time=t, coordinator=coordinator, epoch=epoch, detail=detail)
    return [etcd.ops.put(keys.event(seq), record.to_json())]


def list_events(etcd, keys: Keys, limit: int = 50) -> list[EventRecord]:
    """The most recent events, newest first (a value that is no event is left out, logged)."""
    resp = etcd.range_response(keys.events, prefix_end(keys.events), sort_order="descend",
                               sort_target="key", limit=limit)
    return [e for e in (EventRecord.parse(kv.value) for kv in resp.kvs) if e is not None]

