"""What the UI shows, read from etcd in a bounded number of round trips.

`read_snapshot` makes two: one transaction holding three range reads (so
agents, agent-config, build-status, coordinators, leader, runtime, settings
and switchover come from the same revision), and one read of the newest
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

from coordinator.events import list_events
from coordinator.keys import Keys, decode, prefix_end
from coordinator.settings import Settings

EVENTS_SHOWN = 20


@dataclasses.dataclass
class Snapshot:
    revision: int
    leader: dict | None
    epoch: int | None
    leader_kv: tuple[bytes | None, Any]
    coordinators: dict[str, dict]
    agents: dict[str, dict]
    agent_config: dict[str, dict]
    runtime: dict
    settings: Settings
    switchover: dict | None
    build_status: dict[str, dict]
    events: list[dict]


def _value(raw: bytes) -> Any:
    try:
        return decode(raw)
    except ValueError:
        return None  # a malformed value must not take the UI down


def read_snapshot(etcd, keys: Keys, events_limit: int = EVENTS_SHOWN) -> Snapshot:
    get = etcd.ops.get
    root = keys.root
    _, ranges = etcd.txn([], [
        get(root, keys.builds),                        # agent-config/ agents/ backup-contact/ build-status/
        get(keys.coordinators, keys.events),           # coordinators/
        get(keys.leader, keys.tasks),                  # leader runtime settings switchover
    ])
    by_key: dict[str, tuple[bytes, Any]] = {}
    revision = 0
    for kvs in ranges:
        for value, meta in kvs:
            by_key[meta.key.decode()] = (value, meta)
            revision = max(revision, meta.response_header.revision)

    def under(prefix: str) -> dict[str, dict]:
        out = {}
        for key, (value, _) in by_key.items():
            if key.startswith(prefix):
                decoded = _value(value)
                if isinstance(decoded, dict):
                    out[key[len(prefix):]] = decoded
        return out

    leader_kv = by_key.get(keys.leader, (None, None))
    leader = _value(leader_kv[0]) if leader_kv[0] is not None else None
    runtime = _value(by_key[keys.runtime][0]) if keys.runtime in by_key else None
    settings_raw = by_key.get(keys.settings, (None, None))[0]
    try:
        settings = Settings.from_json(settings_raw)
    except (TypeError, ValueError):
        settings = Settings()
    switch_raw = by_key.get(keys.switchover, (None, None))[0]
    return Snapshot(
        revision=revision, leader=leader if isinstance(leader, dict) else None,
        epoch=leader_kv[1].create_revision if leader_kv[0] is not None else None,
        leader_kv=leader_kv, coordinators=under(keys.coordinators), agents=under(keys.agents),
        agent_config=under(keys.agent_config), runtime=runtime if isinstance(runtime, dict) else {},
        settings=settings, switchover=_value(switch_raw) if switch_raw is not None else None,
        build_status=under(keys.build_status), events=read_events(etcd, keys, events_limit))


def read_events(etcd, keys: Keys, limit: int = EVENTS_SHOWN) -> list[dict]:
    """The newest `limit` events, newest first."""
    return [e for e in list_events(etcd, keys, max(1, int(limit))) if isinstance(e, dict)]


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
        cores = int((presence or {}).get("cores") or run.get("cores") or 0)
        running = int(run.get("running") or 0)
        subscribed = conf.get("subscribed", True if name in snap.agent_config else snap.settings.auto_subscribe)
        disabled = bool(conf.get("disabled", False))
        if presence is None:
            state = "offline"
        elif not subscribed:
            state = "unsubscribed"
        elif disabled:
            state = "disabled"
        elif running > 0:
            state = f"busy {running}/{cores}"
        else:
            state = "idle"
        rows.append({
            "name": name, "state": state.split(" ")[0], "label": state, "cores": cores,
            "running": running, "host": (presence or {}).get("host"), "group": (presence or {}).get("group"),
            "coordinator": (presence or {}).get("coordinator"), "connected": bool(run.get("connected")),
            "builds": list(run.get("builds") or []), "disabled": disabled, "subscribed": bool(subscribed),
        })
    return rows


# -- coordinators -----------------------------------------------------------------

def coordinator_rows(snap: Snapshot, me: str, my_role: str) -> list[dict]:
    """Registered coordinators (key present = alive), plus this one and the selected backup
    when they are not registered (shown as not alive)."""
    rows = {}
    for name, value in snap.coordinators.items():
        rows[name] = {"name": name, "role": value.get("role"), "primary": value.get("primary"),
                      "web": value.get("web"), "grpc": value.get("grpc"), "ready": bool(value.get("ready")),
                      "alive": True}
    if me not in rows:
        rows[me] = {"name": me, "role": my_role, "primary": None, "web": None, "grpc": None,
                    "ready": False, "alive": False}
    selected = snap.settings.selected_backup
    if selected and selected not in rows:
        rows[selected] = {"name": selected, "role": "backup", "primary": None, "web": None, "grpc": None,
                          "ready": False, "alive": False}
    leader = (snap.leader or {}).get("name")
    for row in rows.values():
        row["leader"] = row["name"] == leader
        row["selected"] = row["name"] == selected
    return sorted(rows.values(), key=lambda r: (r["role"] != "primary", r["name"]))


def backups_of(snap: Snapshot, primary: str) -> list[str]:
    """Registered backups whose primary is `primary` (the Settings › Backup choices)."""
    return sorted(name for name, v in snap.coordinators.items()
                  if v.get("role") == "backup" and v.get("primary") == primary)


# -- builds -------------------------------------------------------------------------

BUILD_STATES = ("queued", "running", "done", "failed")


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
        rows.append({
            "id": build_id, "name": info.get("name") or build_id, "state": status.get("state", "queued"),
            "submitted": info.get("submitted"), "user": info.get("user"), "total": total, "done": done,
            "failed": failed, "running": int(status.get("running") or 0),
            "started": status.get("started"), "finished": status.get("finished"),
            "progress": round(100.0 * (done + failed) / total, 1) if total else 0.0,
        })
    rows.sort(key=lambda r: (r["submitted"] or 0, r["id"]), reverse=True)
    return rows


def build_detail(etcd, keys: Keys, build_id: str) -> dict | None:
    """A build with every task's state, from one consistent transaction; None if unknown."""
    get = etcd.ops.get
    tasks_prefix = keys.build_tasks(build_id)
    _, (spec_kvs, status_kvs, task_kvs) = etcd.txn([], [
        get(keys.build(build_id)), get(keys.status_of_build(build_id)),
        get(tasks_prefix, prefix_end(tasks_prefix))])
    if not spec_kvs:
        return None
    spec = _value(spec_kvs[0][0]) or {}
    status = (_value(status_kvs[0][0]) if status_kvs else None) or {}
    records = {}
    for value, meta in task_kvs:
        record = _value(value)
        if isinstance(record, dict):
            records[Keys.name_of(meta.key, tasks_prefix)] = record
    tasks = []
    for task in spec.get("tasks") or []:
        record = records.get(task.get("id")) or {}
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
    return {"id": build_id, "name": spec.get("name"), "state": status.get("state", "queued"),
            "submitted": spec.get("submitted"), "user": spec.get("user"), "started": status.get("started"),
            "finished": status.get("finished"), "total": len(tasks), "counts": counts, "tasks": tasks}
