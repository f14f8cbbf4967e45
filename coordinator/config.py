"""Coordinator configuration: one object, validated when it is built.

A bad value is refused at start with a sentence naming the rule it breaks
(DESIGN.md section 3, rule 3): ttl >= 2 (etcd's smallest TTL) and
ttl > renew_deadline > keepalive_interval > 0.
"""
from __future__ import annotations

import dataclasses
import os
import re

from lease.client import EtcdConfig
from lease.errors import ConfigError
from lease.session import validate_timings as validate_lease_timings  # the one copy of rule 3

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def read_token(path: str | None) -> str | None:
    """The cluster token shared by agents and coordinators: from the file, else
    $BATON_AGENT_TOKEN, else None. ConfigError if the file is unreadable or empty."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the agent token file {path!r}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"the agent token file {path!r} is empty")
        return token
    return os.environ.get("BATON_AGENT_TOKEN") or None


def check_name(kind: str, name: str) -> str:
    """Names become etcd key segments and appear in URLs: keep them plain."""
    if not name or not NAME_RE.match(name):
        raise ConfigError(f"{kind} name {name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return name


def check_hostport(what: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {value!r} must be HOST:PORT")
    return value


@dataclasses.dataclass(frozen=True)
class Timings:
    """Lease and failover timings in seconds (DESIGN.md section 6)."""

    ttl: int = 10
    keepalive_interval: float | None = None  # default ttl/3
    renew_deadline: float | None = None      # default 2/3 ttl
    failback_delay: float = 5.0
    grace: float | None = None               # agents' return grace after a leader change; default ttl

    def __post_init__(self) -> None:
        if self.keepalive_interval is None:
            object.__setattr__(self, "keepalive_interval", self.ttl / 3)
        if self.renew_deadline is None:
            object.__setattr__(self, "renew_deadline", self.ttl * 2 / 3)
        if self.grace is None:
            object.__setattr__(self, "grace", float(self.ttl))
        validate_lease_timings(self.ttl, self.renew_deadline, self.keepalive_interval)
        if self.failback_delay < 0:
            raise ConfigError(f"failback_delay must be >= 0, got {self.failback_delay}")
        if self.grace <= 0:
            raise ConfigError(f"grace must be > 0, got {self.grace}")


@dataclasses.dataclass(frozen=True)
class CoordinatorConfig:
    name: str
    role: str  # "primary" or "backup"
    grpc: str  # HOST:PORT the agents dial
    web: str   # HOST:PORT of the UI
    primary: str | None = None  # a backup's primary; a primary's own name
    cluster: str = "default"
    etcd: EtcdConfig = dataclasses.field(default_factory=EtcdConfig)
    timings: Timings = dataclasses.field(default_factory=Timings)
    agent_token: str | None = None
    # TLS for the agents' gRPC link and the UI (paths); None = plaintext.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    advertise_host: str | None = None  # host name put in etcd for agents/UI links

    def __post_init__(self) -> None:
        check_name("coordinator", self.name)
        check_name("cluster", self.cluster)
        if self.role not in ("primary", "backup"):
            raise ConfigError(f"role must be 'primary' or 'backup', got {self.role!r}")
        if self.role == "backup":
            if not self.primary:
                raise ConfigError("a backup needs --primary NAME (the primary it stands in for)")
            check_name("primary", self.primary)
            if self.primary == self.name:
                raise ConfigError("a backup cannot be its own primary")
        elif self.primary is None:
            object.__setattr__(self, "primary", self.name)
        elif self.primary != self.name:
            raise ConfigError("--primary is only for backups; a primary is its own primary")
        check_hostport("--grpc", self.grpc)
        check_hostport("--web", self.web)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
