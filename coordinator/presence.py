"""How others see this coordinator: its registration key and its state file.

coordinators/<name> lives under the session's lease: it is how the other
coordinators (and the primary's Settings page) know we are here and ready,
and it disappears with the lease. The daemon state file tells this
coordinator's web workers (and /metrics) whether it is acting as leader
right now (cluster.daemon_state); it is rewritten every HA cycle.
"""
from __future__ import annotations

import os
import socket

from cluster.daemon_state import write_state
from cluster.keys import Keys, encode
from coordinator.config import CoordinatorConfig

VERSION = "0.1.0"


class Presence:
    """The registration of `config`'s coordinator at (grpc, web), and its state file at `state_path`."""

    def __init__(self, etcd, keys: Keys, config: CoordinatorConfig, state_path: str, grpc: str, web: str):
        self.etcd = etcd
        self.keys = keys
        self.config = config
        self.state_path = state_path
        self.grpc = grpc
        self.web = web
        self._registered: tuple[int, bool] | None = None  # (lease, ready) last written
        self._leader_name: str | None = None

    def ensure_registered(self, lease_id: int, ready: bool) -> None:
        """Written at once at start (ready false: the primary lists a new backup within a second),
        again when ready or under a new lease, and from every cycle, so a failed attempt is
        simply retried. Raises EtcdUnavailable when etcd does not answer."""
        registration = (lease_id, ready)
        if self._registered != registration:
            value = {"name": self.config.name, "role": self.config.role, "primary": self.config.primary,
                     "grpc": self.grpc, "web": self.web, "version": VERSION,
                     "ready": ready, "host": socket.gethostname()}
            self.etcd.put(self.keys.coordinator(self.config.name), encode(value), lease=lease_id)
            self._registered = registration

    def write_state(self, *, acting: bool, epoch: int | None, leader: str | None, known: bool,
                    session, renew_deadline: float, takeovers: int, failovers: int,
                    stats: dict, sentence: str, handovers: int = 0, revocations: int = 0) -> None:
        """Replace the state file. known: `leader` was read this cycle; else (etcd did
        not answer) the leader we knew is kept."""
        if known:
            self._leader_name = leader
        write_state(self.state_path, {
            "name": self.config.name, "role": self.config.role, "primary": self.config.primary,
            "acting": acting, "epoch": epoch if acting else None,
            "leader": self._leader_name,
            "lease_ttl_left": session.time_left() if session else 0.0,
            "lease_renewal_latency": session.last_renewal_latency if session else None,
            "renew_deadline": renew_deadline,
            "takeovers": takeovers,
            "failovers": failovers,
            "handovers": handovers,
            "revocations": revocations,
            "agents_connected": stats.get("agents_connected", 0),
            "tasks_dispatched": stats.get("tasks_dispatched", 0),
            "store_write_errors": stats.get("store_write_errors", 0),
            "tasks_finished": stats.get("tasks_finished", 0),
            # Cumulative for the process (coordinator.runtime.metrics); web/metrics.py exposes them.
            "histograms": stats.get("histograms", {}),
            "pid": os.getpid(),  # for the daemon's process metrics on /metrics
            "sentence": sentence,
        })
