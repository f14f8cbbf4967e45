"""Coordinator configuration: one object, validated when it is built.

A bad value is refused at start with a sentence naming the rule it breaks
(docs/design.md section 3, rule 3): ttl >= 2 (etcd's smallest TTL) and
ttl > renew_deadline > keepalive_interval > 0.
"""
from __future__ import annotations

import dataclasses

from cluster.names import check_hostport, check_name
from lease.client import EtcdConfig
from lease.errors import ConfigError
from lease.session import validate_timings as validate_lease_timings  # the one copy of rule 3


@dataclasses.dataclass(frozen=True)
class Timings:
    """Lease and failover timings in seconds (docs/design.md section 6)."""

    ttl: int = 10
    keepalive_interval: float | None = None  # default ttl/3
    renew_deadline: float | None = None      # default 2/3 ttl
    failback_delay: float = 5.0
    grace: float | None = None               # agents' return grace after a leader change; default ttl
    # A `baton run` build whose initiator has no stream to the leader this long ends failed
    # (coordinator/runtime/run_records.py); default 6 ttl: a failover and a handback fit in it.
    run_abandon: float | None = None

    def __post_init__(self) -> None:
        if self.keepalive_interval is None:
            object.__setattr__(self, "keepalive_interval", self.ttl / 3)
        if self.renew_deadline is None:
            object.__setattr__(self, "renew_deadline", self.ttl * 2 / 3)
        if self.grace is None:
            object.__setattr__(self, "grace", float(self.ttl))
        if self.run_abandon is None:
            object.__setattr__(self, "run_abandon", 6.0 * self.ttl)
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
    # A primary's first-start setting: the backup selected when it first leads a
    # cluster that has no settings yet (never overriding a later choice).
    initial_backup: str | None = None

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
        if self.initial_backup is not None:
            if self.role != "primary":
                raise ConfigError("--initial-backup is for the primary (it stores the first settings)")
            check_name("backup", self.initial_backup)
            if self.initial_backup == self.name:
                raise ConfigError("--initial-backup names a backup, not the primary itself")
        check_hostport("--grpc", self.grpc)
        check_hostport("--web", self.web)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
