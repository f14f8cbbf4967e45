"""The checker every fault test and bench/chaos.py share: one pass over etcd's
full revision history of a cluster (docs/design.md section 3, the fencing rules).

It lives in bench/ so that both bench/chaos.py and the tests (through
tests/harness/audit.py) use it; it imports only cluster/ and lease/.

What it reads: every event under /baton/<cluster>/ from `since` + 1 up to
the revision current when the check starts, from a watch of the whole
keyspace (etcd bumps its revision only on writes, so the event at that last
revision exists and tells us the replay is complete). A compacted revision
in that range is an error (HistoryCompacted), never a fallback to the
current state: a task written twice would then count once.

What it checks, and what can be checked per key:
- Epochs come from the leader key's own history: an epoch is a create
  revision of the key, its holder the name in the key's value, and it ends
  at the revision where the key is deleted (resign or lease expiry). Every
  put of the key within one epoch must name the same holder (at most one
  holder per epoch); a create while an epoch is open is an error.
- Every write (put or delete) to a key a coordinator writes through a Fence
  (tasks/, build-status/, builds/, runtime, settings, users/, events/,
  agent-config/, switchover, backup-contact/) must happen at a revision where
  an epoch is in force: its create revision up to and including its end (a
  resign deletes the key in the same transaction as its last records). The
  fence compares the leader key's create revision, so etcd itself enforces
  this; a write outside every epoch is an unfenced write.
- Records that carry their epoch and writer (tasks/, runtime, events/) must
  carry the epoch in force at their revision (a record of an older epoch
  written after that epoch ended is a stale write) and name that epoch's
  holder. builds/, build-status/, settings, users/, agent-config/,
  switchover and backup-contact/ do not say who wrote them (a web worker of
  any coordinator writes some with the leader's fence): for them only "inside
  an epoch" can be checked.
- Tasks: per (task, attempt) at most one running record (an attempt names
  one placement: a running write whose outcome was unknown is followed by a
  new attempt, coordinator/runtime/state.py `unassign`) and at most one end
  record (done or failed with a result, or cancelled); no record of an
  attempt after its end; the last
  record of a task is an end record of its highest attempt. Every build
  (builds/<id>) ended: its last status is done, failed or cancelled, and a
  build that is done has every task of its spec ended done.
- Agents (optional): every run an agent reports having started (its log
  line "running task <build>/<task>#<attempt> for <coordinator> (epoch
  <n>)", agent/core.py) was committed first as that attempt's running record
  on that agent, by that coordinator, in that epoch; no attempt started
  twice; each agent's last registration names the last leader.

Over 400 lines: one replay of the history with one check per rule above,
each next to the state it reads; split, the rules would share that state
across modules.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import grpc
from etcd3 import etcdrpc

from cluster.keys import Keys
from lease.session import usable_channel, with_require_leader
from lease.watcher import Watcher, WatchEvent

END_STATES = ("done", "failed", "cancelled")
BUILD_END_STATES = ("done", "failed", "cancelled")
AGENT_RUN_LINE = re.compile(r"running task (?P<build>[^/\s]+)/(?P<task>\S+)#(?P<attempt>\d+) "
                            r"for (?P<coordinator>\S+) \(epoch (?P<epoch>\d+)\)")


class HistoryCompacted(Exception):
    """etcd no longer has part of the history the check needs."""


def read_history(etcd, since: int = 0, until: int | None = None, timeout: float = 60.0) -> list[WatchEvent]:
    """Every event of the whole keyspace at revisions since+1 .. until (default: now).

    Raises HistoryCompacted when etcd compacted past since+1, TimeoutError when
    the replay does not reach `until` within timeout."""
    until = etcd.revision() if until is None else until
    if until <= since:
        return []
    create = etcdrpc.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=since + 1)
    done: queue.Queue = queue.Queue()

    def requests():
        yield etcdrpc.WatchRequest(create_request=create)
        done.get()  # keep the stream open until the replay is complete

    call = etcdrpc.WatchStub(usable_channel(etcd)).Watch(
        requests(), timeout=timeout, **with_require_leader(etcd.call_kwargs))
    events: list[WatchEvent] = []
    try:
        for response in call:
            if response.compact_revision > 0:
                raise HistoryCompacted(f"etcd compacted its history up to revision {response.compact_revision}; "
                                       f"the check needs every revision after {since}")
            if response.canceled:
                raise RuntimeError(f"etcd cancelled the history watch: {response.cancel_reason}")
            events += [Watcher._event(e) for e in response.events]
            if events and events[-1].mod_revision >= until:
                break
        else:
            raise TimeoutError(f"history replay ended at revision {events[-1].mod_revision if events else since}, "
                               f"short of {until}")
    except grpc.RpcError as exc:
        raise TimeoutError(f"history replay to revision {until} failed: {exc.code()} {exc.details()}") from exc
    finally:
        done.put(None)
        call.cancel()
    return [e for e in events if e.mod_revision <= until]


@dataclasses.dataclass
class Epoch:
    epoch: int              # the leader key's create revision
    holder: str
    end: int | None = None  # the revision of the key's delete; None while it is held

    def covers(self, revision: int) -> bool:
        return self.epoch <= revision and (self.end is None or revision <= self.end)


@dataclasses.dataclass
class Verdict:
    """What the history showed. `problems` empty means every check passed."""

    epochs: list[Epoch] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    writes_checked: int = 0          # fenced writes compared with the epoch in force
    signed_writes: int = 0           # of which carry their epoch and writer
    tasks: int = 0                   # tasks with at least one record
    attempts_ended: int = 0
    builds: int = 0
    builds_ended: int = 0
    agent_runs: int = 0              # runs the agents reported, matched with the history
    revisions: tuple[int, int] = (0, 0)
    seconds: float = 0.0
    ends: dict = dataclasses.field(default_factory=dict)     # (build, task) -> end records written
    events: list = dataclasses.field(default_factory=list)   # the cluster's history, for a test's own checks

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def summary(self) -> str:
        return (f"revisions {self.revisions[0]}..{self.revisions[1]}: {len(self.epochs)} epochs, "
                f"{self.writes_checked} fenced writes ({self.signed_writes} signed), {self.tasks} tasks, "
                f"{self.attempts_ended} attempts ended, {self.builds_ended}/{self.builds} builds ended, "
                f"{self.agent_runs} agent runs matched; "
                + ("no problem" if self.ok else f"{len(self.problems)} problems, first: {self.problems[:5]}"))


def fenced_prefixes(keys: Keys) -> tuple[str, ...]:
    """The keys written only through a Fence (cluster/keys.py); exact keys and prefixes."""
    return (keys.tasks, keys.build_status, keys.builds, keys.runtime, keys.settings, keys.users, keys.events,
            keys.agent_config, keys.switchover, keys.backup_contact)


def json_object(value: bytes | None):
    try:
        data = json.loads(value) if value else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def epochs_from(events: list[WatchEvent], leader_key: str, verdict: Verdict,
                open_epoch: Epoch | None = None) -> list[Epoch]:
    """The epochs of the leader key's history (open_epoch: the one in force at `since`)."""
    epochs = [open_epoch] if open_epoch else []
    current = open_epoch
    for e in events:
        if e.key != leader_key:
            continue
        if e.type == "delete":
            if current is None:
                verdict.problem(f"leader key deleted at revision {e.mod_revision} while no epoch was open")
            else:
                current.end = e.mod_revision
            current = None
            continue
        name = (json_object(e.value) or {}).get("name") or "?"
        if e.create_revision == e.mod_revision:
            if current is not None:
                verdict.problem(f"epoch {e.create_revision} created while epoch {current.epoch} was open")
            current = Epoch(e.create_revision, name)
            epochs.append(current)
        elif current is None or current.epoch != e.create_revision:
            verdict.problem(f"leader key updated at revision {e.mod_revision} for epoch {e.create_revision}, "
                            f"which is not the open epoch")
        elif name != current.holder:
            verdict.problem(f"epoch {current.epoch} has two holders: {current.holder} and {name}")
    return epochs


class _Epochs:
    def __init__(self, epochs: list[Epoch]):
        self.epochs = epochs
        self.by_epoch = {e.epoch: e for e in epochs}

    def at(self, revision: int) -> Epoch | None:
        # Epochs do not overlap (checked), so the last one starting at or before it decides.
        found = None
        for e in self.epochs:
            if e.epoch > revision:
                break
            found = e
        return found if found is not None and found.covers(revision) else None


def check_fenced_writes(events: list[WatchEvent], keys: Keys, epochs: _Epochs, verdict: Verdict) -> None:
    prefixes = fenced_prefixes(keys)
    signed = (keys.tasks, keys.runtime, keys.events)
    for e in events:
        if not e.key.startswith(prefixes):
            continue
        verdict.writes_checked += 1
        epoch = epochs.at(e.mod_revision)
        if epoch is None:
            verdict.problem(f"{e.type} of {e.key} at revision {e.mod_revision}, outside every epoch")
            continue
        value = json_object(e.value) if e.type == "put" and e.key.startswith(signed) else None
        if not value or value.get("epoch") is None:
            continue
        verdict.signed_writes += 1
        carried = int(value["epoch"])
        if carried != epoch.epoch:
            verdict.problem(f"stale write: {e.key} at revision {e.mod_revision} carries epoch {carried}, "
                            f"but epoch {epoch.epoch} ({epoch.holder}) was in force")
        elif value.get("coordinator") not in (None, epoch.holder):
            verdict.problem(f"{e.key} at revision {e.mod_revision}: written by {value.get('coordinator')} "
                            f"under epoch {carried}, held by {epoch.holder}")


def _task_of(key: str, keys: Keys) -> tuple[str, str] | None:
    rest = key[len(keys.tasks):]
    build, _, task = rest.partition("/")
    return (build, task) if task else None


def _is_end(value: dict) -> bool:
    state = value.get("state")
    return state == "cancelled" or (state in ("done", "failed") and bool(value.get("result")))


def task_records(events: list[WatchEvent], keys: Keys) -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """(build, task) -> [(revision, record)] for every put of a task key, in order."""
    out: dict[tuple[str, str], list[tuple[int, dict]]] = defaultdict(list)
    for e in events:
        if e.type == "put" and e.key.startswith(keys.tasks):
            ref = _task_of(e.key, keys)
            value = json_object(e.value)
            if ref and value is not None:
                out[ref].append((e.mod_revision, value))
    return out


def check_tasks(records: dict, verdict: Verdict) -> dict[tuple[str, str], dict]:
    """Exactly-once per attempt; returns each task's last record."""
    last: dict[tuple[str, str], dict] = {}
    for (build, task), history in records.items():
        verdict.tasks += 1
        ended: dict[int, tuple[int, dict]] = {}
        placed: dict[int, tuple[int, dict]] = {}
        for revision, value in history:
            attempt = int(value.get("attempt") or 0)
            if value.get("state") == "running":
                if attempt in placed:
                    at, first = placed[attempt]
                    verdict.problem(f"task {build}/{task} attempt {attempt} placed again at revision {revision} "
                                    f"(on {value.get('agent')}), first at revision {at} (on {first.get('agent')})")
                placed.setdefault(attempt, (revision, value))
            if attempt in ended:
                at, first = ended[attempt]
                same = " (the same record again: a write retried after an ambiguous etcd error)" \
                    if value == first else ""
                verdict.problem(f"task {build}/{task} attempt {attempt} written again at revision {revision} "
                                f"after it ended at revision {at} ({value.get('state')}){same}")
            if _is_end(value):
                ended.setdefault(attempt, (revision, value))
                verdict.ends[(build, task)] = verdict.ends.get((build, task), 0) + 1
        verdict.attempts_ended += len(ended)
        final = history[-1][1]
        last[(build, task)] = final
        top = max(int(v.get("attempt") or 0) for _, v in history)
        if _is_end(final) and int(final.get("attempt") or 0) != top:
            verdict.problem(f"task {build}/{task} ended with attempt {final.get('attempt')}, "
                            f"but attempt {top} was assigned")
    return last


def final_values(events: list[WatchEvent], prefix: str) -> dict[str, dict]:
    """key -> last value under prefix (deleted keys left out)."""
    out: dict[str, dict] = {}
    for e in events:
        if e.key.startswith(prefix):
            if e.type == "put":
                out[e.key] = json_object(e.value) or {}
            else:
                out.pop(e.key, None)
    return out


def check_builds(events: list[WatchEvent], keys: Keys, last: dict, verdict: Verdict,
                 builds_must_end: bool) -> None:
    specs = final_values(events, keys.builds)
    statuses = final_values(events, keys.build_status)
    for key, spec in specs.items():
        build_id = Keys.name_of(key, keys.builds)
        verdict.builds += 1
        status = statuses.get(keys.status_of_build(build_id), {})
        state = status.get("state")
        if state in BUILD_END_STATES:
            verdict.builds_ended += 1
        elif builds_must_end:
            verdict.problem(f"build {build_id} did not end (last status {state})")
            continue
        task_ids = [t.get("id") for t in spec.get("tasks") or []]
        if state == "done":
            for t in task_ids:
                record = last.get((build_id, t))
                if record is None or record.get("state") != "done" or not _is_end(record):
                    verdict.problem(f"build {build_id} is done but task {t} ended "
                                    f"{record.get('state') if record else 'never'}")
        elif state in BUILD_END_STATES:
            for t in task_ids:
                record = last.get((build_id, t))
                if record is not None and not _is_end(record) and state != "cancelled":
                    verdict.problem(f"build {build_id} ended {state} with task {t} still {record.get('state')}")


def agent_runs(log_path: Path) -> list[dict]:
    """The runs an agent's log says it started (agent/core.py logs one line per run)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [dict(m.groupdict(), attempt=int(m["attempt"]), epoch=int(m["epoch"]))
            for m in AGENT_RUN_LINE.finditer(text)]


def check_agents(records: dict, agent_logs: dict[str, Path], verdict: Verdict) -> None:
    started: dict[tuple[str, str, int], str] = {}
    for agent, path in agent_logs.items():
        for run in agent_runs(path):
            ref = (run["build"], run["task"], run["attempt"])
            verdict.agent_runs += 1
            if ref in started:
                verdict.problem(f"{ref[0]}/{ref[1]}#{ref[2]} started by {started[ref]} and again by {agent}")
            started[ref] = agent
            committed = any(v.get("state") == "running" and int(v.get("attempt") or 0) == run["attempt"]
                            and v.get("agent") == agent and int(v.get("epoch") or -1) == run["epoch"]
                            and v.get("coordinator") == run["coordinator"]
                            for _, v in records.get((run["build"], run["task"]), []))
            if not committed:
                verdict.problem(f"{agent} ran {ref[0]}/{ref[1]}#{ref[2]} for {run['coordinator']} "
                                f"(epoch {run['epoch']}) with no such committed assignment")


def check_agents_on_leader(events: list[WatchEvent], keys: Keys, epochs: list[Epoch], agents: Iterable[str],
                           verdict: Verdict) -> None:
    leader = epochs[-1] if epochs and epochs[-1].end is None else None
    registered = final_values(events, keys.agents)
    for name in agents:
        record = registered.get(keys.agent(name))
        if leader is None or record is None or record.get("coordinator") != leader.holder:
            verdict.problem(f"agent {name} ends on {record.get('coordinator') if record else 'nobody'}, "
                            f"the leader is {leader.holder if leader else 'nobody'}")


def leader_at(etcd, keys: Keys, revision: int) -> Epoch | None:
    """The epoch in force at `revision` (read at that revision), for a check that starts there."""
    if revision <= 0:
        return None
    resp = etcd.range_response(keys.leader, revision=revision)
    if not resp.kvs:
        return None
    kv = resp.kvs[0]
    return Epoch(kv.create_revision, (json_object(kv.value) or {}).get("name") or "?")


def check_history(etcd, keys: Keys, since: int = 0, *, builds_must_end: bool = True,
                  agent_logs: dict[str, Path] | None = None, agents_on_leader: Iterable[str] = (),
                  timeout: float = 60.0) -> Verdict:
    """Replay etcd's history of the cluster from since+1 to now and check it (see the module's
    docstring). Raises HistoryCompacted when that history is no longer whole."""
    began = time.monotonic()
    until = etcd.revision()
    events = [e for e in read_history(etcd, since, until, timeout) if e.key.startswith(keys.root)]
    verdict = Verdict(revisions=(since + 1, until), events=events)
    epochs = epochs_from(events, keys.leader, verdict, leader_at(etcd, keys, since))
    verdict.epochs = epochs
    check_fenced_writes(events, keys, _Epochs(epochs), verdict)
    records = task_records(events, keys)
    last = check_tasks(records, verdict)
    check_builds(events, keys, last, verdict, builds_must_end)
    if agent_logs:
        check_agents(records, agent_logs, verdict)
    if agents_on_leader:
        check_agents_on_leader(events, keys, epochs, agents_on_leader, verdict)
    verdict.seconds = time.monotonic() - began
    return verdict
