"""Typed records of what is stored in etcd (the key layout is cluster.keys).

One parser per record, used by every reader, so that a value means the same
in the HA loop, the agents, the web UI and the command line. A value that
cannot be read as the record parses to None (logged; the reader treats the
key as missing), never to an exception deep inside a caller. `to_json` is
the stored value; `to_dict` the same as plain data (the JSON API).

Settings and users have their own typed records (cluster.settings.Settings,
cluster.users); builds, their status and tasks are the runtime's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from cluster.keys import encode

log = logging.getLogger(__name__)

# The states of build-status/<id> (cluster/keys.py); a build in BUILD_ENDED never changes again.
BUILD_STATES = ("queued", "running", "done", "failed", "cancelled")
BUILD_ENDED = ("done", "failed", "cancelled")


@dataclasses.dataclass(frozen=True)
class LeaderRecord:
    """The leader key: who leads and where, with its create revision as the
    epoch (the fencing token every write compares) and its lease."""

    name: str
    role: str
    epoch: int
    grpc: str = ""
    web: str = ""
    lease_id: int = 0

    @classmethod
    def parse(cls, value: bytes | str | None, create_revision: int,
              lease_id: int = 0) -> "LeaderRecord | None":
        """The record, or None for a missing key or a value that names no
        coordinator (logged: then there is no leader anyone can follow)."""
        if value is None:
            return None
        try:
            data = json.loads(value)
            name = data["name"]
            if not isinstance(name, str) or not name:
                raise ValueError("no name")
            return cls(name=name, role=str(data.get("role") or ""), epoch=int(create_revision),
                       grpc=str(data.get("grpc") or ""), web=str(data.get("web") or ""),
                       lease_id=int(lease_id or 0))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("the leader key holds %.200r, which names no coordinator (%s)", value, exc)
            return None

    def to_json(self) -> bytes:
        """The stored value (the epoch and lease are the key's metadata, not its value)."""
        return json.dumps({"name": self.name, "role": self.role, "grpc": self.grpc,
                           "web": self.web}).encode()

    @property
    def identity(self) -> tuple[int, str]:
        """Two records with the same identity are the same stream target for an agent."""
        return (self.epoch, self.grpc)

    def __str__(self) -> str:
        return f"{self.name} at {self.grpc} (epoch {self.epoch})"


def _object(value: bytes | str | dict) -> dict:
    """The stored JSON object (a dict passes through); ValueError for anything else."""
    data = json.loads(value) if isinstance(value, (bytes, str)) else value
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object: {type(data).__name__}")
    return data


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> int | None:
    return None if value is None else int(value)


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _parsed(cls, what: str, value, build):
    """build(dict) as the record, or None (logged) for a missing or unusable value."""
    if value is None:
        return None
    try:
        return build(_object(value))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s holds %.200r, which is no %s (%s); treated as missing", what, value, cls.__name__, exc)
        return None


class _Stored:
    """A record stored whole as its JSON object: every field is a key of the value."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return encode(self.to_dict())


@dataclasses.dataclass(frozen=True)
class CoordinatorRecord(_Stored):
    """coordinators/<name>: a coordinator registered under its session's lease
    (the key is there while it lives), where it serves and whether it is ready."""

    name: str
    role: str | None = None
    primary: str | None = None
    grpc: str | None = None
    web: str | None = None
    version: str | None = None
    ready: bool = False
    ready_since: float | None = None
    host: str | None = None

    @classmethod
    def parse(cls, value: bytes | str | dict | None, name: str) -> "CoordinatorRecord | None":
        """The record of coordinator `name` (the key's last part, which wins over
        the value's), or None for a missing or unusable value."""
        return _parsed(cls, f"coordinators/{name}", value, lambda d: cls(
            name=name, role=_text(d.get("role")), primary=_text(d.get("primary")), grpc=_text(d.get("grpc")),
            web=_text(d.get("web")), version=_text(d.get("version")), ready=bool(d.get("ready")),
            ready_since=None if d.get("ready_since") is None else float(d["ready_since"]),
            host=_text(d.get("host"))))


@dataclasses.dataclass(frozen=True)
class AgentRecord(_Stored):
    """agents/<name>: an agent's presence under its own lease, with the
    coordinator it is linked with (None while it is not) and that link's epoch,
    and where it serves compile jobs."""

    name: str
    host: str | None = None
    cores: int = 0
    group: str | None = None
    version: str | None = None
    coordinator: str | None = None
    epoch: int | None = None
    helper: str | None = None        # host:port of its Helper service (compile.proto), if it serves one

    @classmethod
    def parse(cls, value: bytes | str | dict | None, name: str) -> "AgentRecord | None":
        """The record of agent `name` (the key's last part), or None for a missing or unusable value."""
        return _parsed(cls, f"agents/{name}", value, lambda d: cls(
            name=name, host=_text(d.get("host")), cores=int(d.get("cores") or 0), group=_text(d.get("group")),
            version=_text(d.get("version")), coordinator=_text(d.get("coordinator")),
            epoch=_number(d.get("epoch")), helper=_text(d.get("helper"))))

    def to_dict(self) -> dict[str, Any]:
        stored = super().to_dict()
        if stored["helper"] is None:
            del stored["helper"]   # the value an agent without a Helper service always wrote
        return stored


@dataclasses.dataclass(frozen=True)
class EventRecord(_Stored):
    """events/<seq>: something the leader did (a failover, a handback...), in
    the same fenced transaction as the act itself."""

    type: str
    time: float
    coordinator: str
    epoch: int | None = None
    detail: str = ""

    @classmethod
    def parse(cls, value: bytes | str | dict | None) -> "EventRecord | None":
        """The event, or None for a missing or unusable value (no type or time)."""
        return _parsed(cls, "an event", value, lambda d: cls(
            type=str(d["type"]), time=float(d["time"]), coordinator=str(d.get("coordinator") or ""),
            epoch=_number(d.get("epoch")), detail=str(d.get("detail") or "")))


# What a coordinator keeps of an initiator's report (coordinator/runtime/run_records.py):
# the initiator holds the cluster token, but its text is still bounded before it is stored.
MAX_TEXT = 1024
RUN = "run"   # the kind of a `baton run` build (builds/<id>, build-status/<id>)


def bounded(value: Any, limit: int = MAX_TEXT) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class JobRecord(_Stored):
    """jobs/<build>/<seq>: one compile of a `baton run` build (docs/design.md
    section 8): where it ran (`helper` is the agent's name or "local"; `core` the
    slot of the build's grant on that agent, None for a local job), when, and how
    it ended; `why_local` says why a job that could have gone remote did not.
    `core_started`, `core_finished`: when a remote job held its core (None: not
    known), within [started, finished]: a job waits for a core after it starts,
    so only these draw a core's jobs without overlap (the build monitor's lanes).
    `epoch` and `coordinator` name the writer (an audit's evidence, as for tasks)."""

    seq: int
    helper: str
    started: float
    finished: float
    exit_code: int
    remote: bool = False
    source: str = ""
    core: int | None = None
    why_local: str = ""
    compiler: str = ""
    epoch: int | None = None
    coordinator: str | None = None
    core_started: float | None = None
    core_finished: float | None = None

    @property
    def duration(self) -> float:
        return round(max(0.0, self.finished - self.started), 3)

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    @classmethod
    def parse(cls, value: bytes | str | dict | None) -> "JobRecord | None":
        """The job, or None for a missing or unusable value (no seq, helper or times)."""
        return _parsed(cls, "a job record", value, lambda d: cls(
            seq=int(d["seq"]), helper=str(d["helper"]), started=float(d["started"]),
            finished=float(d["finished"]), exit_code=int(d["exit_code"]), remote=bool(d.get("remote")),
            source=str(d.get("source") or ""), core=_number(d.get("core")), why_local=str(d.get("why_local") or ""),
            compiler=str(d.get("compiler") or ""), epoch=_number(d.get("epoch")),
            coordinator=_text(d.get("coordinator")), core_started=_seconds(d.get("core_started")),
            core_finished=_seconds(d.get("core_finished"))))

    @classmethod
    def from_report(cls, report, epoch: int, coordinator: str) -> "JobRecord":
        """From an initiator's compile_pb2.JobReport (bounded: see MAX_TEXT)."""
        remote = bool(report.remote)
        started = float(report.started)
        finished = max(float(report.finished), started)
        on_core = None
        if remote and report.core_started and report.core_finished:   # 0: an initiator that does not say
            core_started = min(max(float(report.core_started), started), finished)
            on_core = (core_started, min(max(float(report.core_finished), core_started), finished))
        return cls(seq=int(report.seq), helper=bounded(report.helper or "local", 64),
                   started=started, finished=finished,
                   exit_code=int(report.exit_code), remote=remote, source=bounded(report.source),
                   core=int(report.core) if remote else None,
                   why_local="" if remote else bounded(report.why_local),
                   compiler=bounded(report.compiler, 64), epoch=epoch, coordinator=coordinator,
                   core_started=on_core[0] if on_core else None, core_finished=on_core[1] if on_core else None)

    def to_dict(self) -> dict[str, Any]:
        """The stored value, with the duration (what the API serves)."""
        return dict(dataclasses.asdict(self), duration=self.duration)
