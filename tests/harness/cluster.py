"""A real multi-member etcd cluster for fault tests.

`EtcdCluster(tmp, size=3)` starts `size` EtcdMember processes that know each
other through one --initial-cluster string. Tests break it on purpose: kill,
pause (SIGSTOP: a wedged member), resume, restart (same data dir and ports,
so the member rejoins as itself). `wait_quorum()` and `leader_member()` ask
the members themselves through etcd's HTTP gateway
(/v3/maintenance/status), so they need no gRPC client and work over TLS.
"""
from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from pathlib import Path

from tests.harness.etcd import EtcdMember
from tests.harness.wait import wait_until


class EtcdCluster:
    """`size` etcd members on loopback. `urls` is what lease.client.connect takes."""

    def __init__(self, tmp: Path, size: int = 3, tls: dict | None = None, name_prefix: str = "m"):
        self.tmp = Path(tmp)
        self.tls = tls
        # A token of its own, so members of two clusters can never join each other.
        token = "baton-test-" + uuid.uuid4().hex[:8]
        self.members = [EtcdMember(name=f"{name_prefix}{i}", data_dir=self.tmp / f"{name_prefix}{i}",
                                   tls=tls, cluster_token=token) for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    # -- whole cluster ---------------------------------------------------------
    @property
    def urls(self) -> str:
        """Comma-joined client URLs of every member (dead or alive)."""
        return ",".join(m.client_url for m in self.members)

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self) -> "EtcdCluster":
        """Start every member at once (they wait for each other) and wait for quorum."""
        for m in self.members:
            m.start()
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every running member is healthy (which needs a leader and quorum)."""
        for m in self.members:
            if m.alive:
                m.wait_ready(timeout)

    def stop(self, graceful: bool = False) -> None:
        """End every member. Never raises.

        By default members are killed: test data is thrown away, and a
        graceful stop of a raft leader waits seconds for a leadership transfer.
        """
        for m in self.members:
            try:
                m.stop() if graceful else m.kill()
            except Exception:  # noqa: BLE001 - cleanup must reach every member
                m.kill()

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one member ------------------------------------------------------------
    def kill(self, i: int) -> EtcdMember:
        self.members[i].kill()
        return self.members[i]

    def pause(self, i: int) -> EtcdMember:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers."""
        self.members[i].pause()
        return self.members[i]

    def resume(self, i: int) -> EtcdMember:
        self.members[i].resume()
        return self.members[i]

    def restart(self, i: int, wait: bool = True) -> EtcdMember:
        """Kill and start again with the same data dir and ports; wait until healthy."""
        m = self.members[i]
        m.restart()
        if wait:
            m.wait_ready()
        return m

    # -- status ----------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.tls["ca"]) if self.tls else None

    def member_status(self, member: EtcdMember, timeout: float = 1.0) -> dict:
        """The member's own view: {"member_id", "leader", "raft_term"} (ids as ints).

        Raises OSError/ValueError when the member does not answer in time.
        """
        req = urllib.request.Request(member.client_url + "/v3/maintenance/status", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as r:
            body = json.loads(r.read())
        return {"member_id": int(body["header"]["member_id"]),
                "leader": int(body.get("leader", 0)),
                "raft_term": int(body.get("raftTerm", 0))}

    def leader_member(self) -> EtcdMember | None:
        """The member that is raft leader, as the running members agree; None if no leader."""
        ids: dict[int, EtcdMember] = {}
        leaders: set[int] = set()
        for m in self.members:
            if not m.alive:
                continue
            try:
                st = self.member_status(m)
            except (OSError, ValueError, KeyError):
                continue  # paused or still starting
            ids[st["member_id"]] = m
            if st["leader"]:
                leaders.add(st["leader"])
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def wait_quorum(self, timeout: float = 30.0) -> EtcdMember:
        """Wait until there is a leader and it serves linearizable requests; return it."""

        def leader_healthy() -> EtcdMember | None:
            leader = self.leader_member()
            if leader is None:
                return None
            with urllib.request.urlopen(leader.client_url + "/health", timeout=1,
                                        context=self._ssl_context()) as r:
                return leader if b'"true"' in r.read() else None

        return wait_until(leader_healthy, timeout, interval=0.05, message="etcd quorum with a leader")
