"""Typed records of what is stored in etcd (the key layout is cluster.keys).

One parser per record, used by every reader, so that a value means the same
in the HA loop, the agents, the web UI and the command line. A value that
cannot be read as the record parses to None (the reader treats the key as
missing and logs it), never to an exception deep inside a caller.
"""
from __future__ import annotations

import dataclasses
import json
import logging

log = logging.getLogger(__name__)


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
