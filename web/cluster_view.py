"""What the UI shows, read from etcd in a bounded number of round trips.

`read_snapshot` reads agents, agent-config, build-status, coordinators,
leader, runtime, settings and switchover in range reads pinned to the first
one's revision (not a read-only transaction, which can crash etcd < 3.5.5:
lease.client.Etcd.read_together), and the newest
events (a descending range with a limit, because events accumulate). The
builds/ specs (up to 10,000 tasks each) are never range-read: a build's
list entry comes from build-status/<id>, and its name from the immutable
spec, read once per process and cached.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

from cluster.events import list_events
from cluster.keys import Keys, decode, prefix_end
from cluster import records
from cluster.records import AgentRecord, CoordinatorRecord, EventRecord, LeaderRecord
from cluster.settings import Settings
from web import run_view

EVENTS_SHOWN = 20


@dataclasses.dataclass
class Snapshot:
    revision: int
    leader: LeaderRecord | None
    epoch: int | None
    leader_kv: tuple[bytes | None, Any]
    coordinators: dict[str, CoordinatorRecord]
    agents: dict[str, AgentRecord]
    agent_config: dict[str, dict]
    runtime: dict
    settings: Settings
    switchover: dict | None
    build_status: dict[str, dict]
    events: list[EventRecord]
    build_cancels: dict[str, dict] = dataclasses.field(default_factory=dict)  # build-cancel/<id>


def _value(raw: bytes) -> Any:
    try:
        return decode(raw)
    except ValueError:
        return None  # a malformed value must not take the UI down


class DecodeCache:
    """Decoded values (records under agents/ and coordinators/) by (key,
    mod_revision): between two polls most of 1,000 agents' keys have not
    changed, so their JSON is not parsed again.

    Values handed out are shared between requests: callers must not mutate them.
    Each snapshot replaces the cache with the keys it saw (no unbounded growth).
    """

    def __init__(self) -> None:
        self._items: dict[bytes, tuple[int, Any]] = {}

    def decode_all(self, kvs, keys: Keys) -> dict[str, Any]:
        old, new = self._items, {}
        out = {}
        for kv in kvs:
            hit = old.get(kv.key)
            if hit is not None and hit[0] == kv.mod_revision:
                value = hit[1]
            else:
                value = _read(keys, kv.key.decode(), kv.value)
            new[kv.key] = (kv.mod_revision, value)
            out[kv.key.decode()] = value
        self._items = new  # one assignment: safe with concurrent readers
        return out


def _read(keys: Keys, key: str, raw: bytes) -> Any:
    """The record a key holds (None if unusable), or its decoded JSON."""
    if key.startswith(keys.agents):
        return AgentRecord.parse(raw, key[len(keys.agents):])
    if key.startswith(keys.coordinators):
        return CoordinatorRecord.parse(raw, key[len(keys.coordinators):])
    return _value(raw)


# The three ranges that make a snapshot (everything under the cluster root except
# builds/ (large specs), events/ (read newest-first with a limit), tasks/ and users/).
def _ranges(keys: Keys) -> list[tuple[str, str]]:
    return [(keys.root, keys.builds),            # agent-config/ agents/ backup-contact/ build-cancel/ build-status/
            (keys.coordinators, keys.events),    # coordinators/
            (keys.leader, keys.tasks)]           # leader runtime settings switchover


def read_snapshot(etcd, keys: Keys, events_limit: int = EVENTS_SHOWN, cache: DecodeCache | None = None) -> Snapshot:
    """The cluster as the UI shows it, all read at one etcd revision (4 range reads)."""
    cache = cache or DecodeCache()
    (first_start, first_end), *rest = _ranges(keys)
    first = etcd.range_response(first_start, first_end)
    revision = first.header.revision
    kvs = list(first.kvs)
    leader_meta = None
    for start, end in rest:
        response = etcd.range_response(start, end, revision=revision)
        kvs.extend(response.kvs)
    for kv in kvs:
        if kv.key == keys.leader.encode():
            leader_meta = kv
    values = cache.decode_all(kvs, keys)

    buckets: dict[str, dict[str, Any]] = {p: {} for p in (keys.agents, keys.agent_config, keys.build_status,
                                                           keys.build_cancels, keys.coordinators)}
    for key, value in values.items():
        if not isinstance(value, (dict, AgentRecord, CoordinatorRecord)):
            continue
        for prefix, bucket in buckets.items():
            if key.startswith(prefix):
                bucket[key[len(prefix):]] = value
                break

    leader = LeaderRecord.parse(leader_meta.value, leader_meta.create_revision, leader_meta.lease) \
        if leader_meta is not None else None
    runtime = values.get(keys.runtime)
    settings_value = values.get(keys.settings)
    try:
        settings = Settings(**{k: v for k, v in settings_value.items() if k in Settings.__dataclass_fields__}) \
            if isinstance(settings_value, dict) else Settings()
    except (TypeError, ValueError):
        settings = Settings()
    leader_kv = (leader_meta.value, _Meta(leader_meta)) if leader_meta is not None else (None, None)
    return Snapshot(
        revision=revision, leader=leader,
        epoch=leader_meta.create_revision if leader_meta is not None else None,
        leader_kv=leader_kv, coordinators=buckets[keys.coordinators], agents=buckets[keys.agents],
        agent_config=buckets[keys.agent_config], runtime=runtime if isinstance(runtime, dict) else {},
        settings=settings, switchover=values.get(keys.switchover),
        build_status=buckets[keys.build_status], events=read_events(etcd, keys, events_limit),
        build_cancels=buckets[keys.build_cancels])


class _Meta:
    """The leader key's metadata in the shape etcd.get returns (create_revision, lease_id...)."""

    def __init__(self, kv) -> None:
        self.key = kv.key
        self.create_revision = kv.create_revision
        self.mod_revision = kv.mod_revision
        self.version = kv.version
        self.lease_id = kv.lease


def read_events(etcd, keys: Keys, limit: int = EVENTS_SHOWN) -> list[EventRecord]:
    """The newest `limit` events, newest first."""
    return list_events(etcd, keys, max(1, int(limit)))


# -- agents ---------------------------------------------------------------------

def agent_rows(snap: Snapshot) -> list[dict]:
    """Every known agent with its state: offline, unsubscribed, disabled, idle or busy n/m.

    An agent is known from its presence key, its admin config or the
    leader's runtime view; without a presence key it is offline.
    """
    live = snap.runtime.get("agents") or {}
    names = set(snap.agents) | set(snap.agent_config) | set(live)
    rows = []
    for name in sorted(names):
        presence = snap.agents.get(name)
        conf = snap.agent_config.get(name) or {}
        run = live.get(name) or {}
        cores = int((presence.cores if presence else 0) or run.get("cores") or 0)
        running = int(run.get("running") or 0)
        # The same rule the leader's dispatcher applies (runtime/state.py Agent.state):
        # with auto-subscribe on every agent is subscribed; otherwise only those an
        # admin subscribed.
        subscribed = snap.settings.auto_subscribe or conf.get("subscribed") is True
        disabled = bool(conf.get("disabled", False))
        if presence is None:
            state = "offline"
        elif disabled:
            state = "disabled"
        elif not subscribed:
            state = "unsubscribed"
        elif running > 0:
            state = f"busy {running}/{cores}"
        else:
            state = "idle"
        rows.append({
            "name": name, "state": state.split(" ")[0], "label": state, "cores": cores,
            "running": running, "host": presence.host if presence else None,
            "group": presence.group if presence else None,
            "coordinator": presence.coordinator if presence else None, "connected": bool(run.get("connected")),
            "builds": list(run.get("builds") or []), "disabled": disabled, "subscribed": bool(subscribed),
            "admin_subscribed": conf.get("subscribed") is True,
        })
    return rows


# -- coordinators -----------------------------------------------------------------

def coordinator_rows(snap: Snapshot, me: str, my_role: str, primary: str | None = None) -> list[dict]:
    """Registered coordinators (key present = alive), plus this one, its primary and the
    selected backup when they are not registered (shown as not alive: "p1 primary down"
    is what a user watching a failover expects to see)."""
    rows = {}
    for name, c in snap.coordinators.items():
        rows[name] = {"name": name, "role": c.role, "primary": c.primary, "web": c.web, "grpc": c.grpc,
                      "ready": c.ready, "alive": True}
    if me not in rows:
        rows[me] = {"name": me, "role": my_role, "primary": None, "web": None, "grpc": None,
                    "ready": False, "alive": False}
    if primary and primary not in rows:
        rows[primary] = {"name": primary, "role": "primary", "primary": primary, "web": None, "grpc": None,
                         "ready": False, "alive": False}
    selected = snap.settings.selected_backup
    if selected and selected not in rows:
        rows[selected] = {"name": selected, "role": "backup", "primary": None, "web": None, "grpc": None,
                          "ready": False, "alive": False}
    leader = snap.leader.name if snap.leader else None
    for row in rows.values():
        row["leader"] = row["name"] == leader
        row["selected"] = row["name"] == selected
    return sorted(rows.values(), key=lambda r: (r["role"] != "primary", r["name"]))


def backups_of(snap: Snapshot, primary: str) -> list[str]:
    """Registered backups whose primary is `primary` (the Settings › Backup choices)."""
    return sorted(name for name, c in snap.coordinators.items() if c.role == "backup" and c.primary == primary)


# -- builds -------------------------------------------------------------------------

BUILD_STATES = records.BUILD_STATES


def build_counts(snap: Snapshot) -> dict[str, int]:
    counts = {s: 0 for s in BUILD_STATES}
    for status in snap.build_status.values():
        state = status.get("state", "queued")
        counts[state] = counts.get(state, 0) + 1
    return counts


class SpecCache:
    """Name/submitted/user/total of build specs, which never change once written."""

    def __init__(self, size: int = 4096):
        self._size = size
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, etcd, keys: Keys, build_id: str) -> dict | None:
        with self._lock:
            if build_id in self._items:
                self._items.move_to_end(build_id)
                return self._items[build_id]
        raw, _ = etcd.get(keys.build(build_id))
        spec = _value(raw) if raw is not None else None
        if not isinstance(spec, dict):
            return None
        summary = {"name": spec.get("name"), "submitted": spec.get("submitted"), "user": spec.get("user"),
                   "total": len(spec.get("tasks") or [])}
        with self._lock:
            self._items[build_id] = summary
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return summary


def build_rows(etcd, keys: Keys, snap: Snapshot, cache: SpecCache) -> list[dict]:
    """Builds newest first with progress; names come from build-status or the cached spec."""
    rows = []
    for build_id, status in snap.build_status.items():
        info = status
        if not status.get("name"):
            info = dict(cache.get(etcd, keys, build_id) or {}, **status)
        total = int(info.get("total") or 0)
        done = int(status.get("done") or 0)
        failed = int(status.get("failed") or 0)
        state = status.get("state", "queued")
        rows.append({
            "id": build_id, "kind": status.get("kind") or "tasks", "name": info.get("name") or build_id,
            "state": state,
            "ended": state in records.BUILD_ENDED, "cancelling": build_id in snap.build_cancels,
            "submitted": info.get("submitted"), "user": info.get("user"), "host": status.get("host"),
            "total": total, "done": done,
            "failed": failed, "running": int(status.get("running") or 0),
            "started": status.get("started"), "finished": status.get("finished"),
            "progress": round(100.0 * (done + failed) / total, 1) if total else 0.0,
            "done_pct": round(100.0 * done / total, 1) if total else 0.0,
            "failed_pct": round(100.0 * failed / total, 1) if total else 0.0,
        })
    rows.sort(key=lambda r: (r["submitted"] or 0, r["id"]), reverse=True)
    return rows


def build_detail(etcd, keys: Keys, build_id: str, states: set[str] | None = None, limit: int | None = None,
                 offset: int = 0, since: int = 0) -> dict | None:
    """A build with its tasks' states, read at one revision; None if unknown.

    `states` keeps only tasks in those states and `offset`/`limit` page through
    them (a build may have 10,000 tasks); "matching" says how many there are.
    A `baton run` build has jobs instead (web/run_view.py; `since`: after that seq).
    """
    tasks_prefix = keys.build_tasks(build_id)
    spec_kvs, status_kvs, cancel_kvs, task_kvs = etcd.read_together([
        (keys.build(build_id), None), (keys.status_of_build(build_id), None),
        (keys.cancel_of_build(build_id), None), (tasks_prefix, prefix_end(tasks_prefix))])
    if not spec_kvs:
        return None
    spec = _value(spec_kvs[0][0]) or {}
    status = (_value(status_kvs[0][0]) if status_kvs else None) or {}
    if isinstance(spec, dict) and run_view.is_run(spec):
        return run_view.run_detail(etcd, keys, build_id, spec, status if isinstance(status, dict) else {}, since)
    cancel = (_value(cancel_kvs[0][0]) if cancel_kvs else None) or None
    task_records = {}
    for value, meta in task_kvs:
        record = _value(value)
        if isinstance(record, dict):
            task_records[Keys.name_of(meta.key, tasks_prefix)] = record
    tasks = []
    for task in spec.get("tasks") or []:
        record = task_records.get(task.get("id")) or {}
        result = record.get("result") or {}
        tasks.append({
            "id": task.get("id"), "cmd": task.get("cmd"), "deps": task.get("deps") or [],
            "state": record.get("state", "queued"), "attempt": record.get("attempt", 0),
            "agent": result.get("agent") or record.get("agent"), "exit_code": result.get("exit_code"),
            "duration": result.get("duration"), "output_tail": result.get("output_tail"),
            "error": result.get("error"),
        })
    counts = {s: 0 for s in ("queued", "running", "done", "failed")}
    for t in tasks:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    total = len(tasks)
    if states:
        tasks = [t for t in tasks if t["state"] in states]
    matching = len(tasks)
    tasks = tasks[offset:offset + limit] if limit is not None else tasks[offset:]
    state = status.get("state", "queued")
    return {"id": build_id, "kind": "tasks", "name": spec.get("name"), "state": state,
            "ended": state in records.BUILD_ENDED,
            "cancel": cancel if isinstance(cancel, dict) else None, "submitted": spec.get("submitted"), "user": spec.get("user"), "started": status.get("started"),
            "finished": status.get("finished"), "total": total, "counts": counts, "matching": matching,
            "offset": offset, "tasks": tasks}
