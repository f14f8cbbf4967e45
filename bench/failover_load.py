"""The load of bench/failover.py: builds submitted through p1's JSON API so that
there is always queued work when a coordinator takes over."""
from __future__ import annotations

import threading

from bench.failover_monitor import Monitor
from cli.api_client import ApiError
from cli.local import LocalCluster


class Feeder(threading.Thread):
    """Keeps about `backlog` tasks not yet finished by submitting builds of
    `size` no-op tasks through p1's API while p1 leads (the only coordinator
    that accepts builds)."""

    def __init__(self, cluster: LocalCluster, monitor: Monitor, size: int, backlog: int):
        super().__init__(name="feeder", daemon=True)
        self.cluster, self.monitor, self.size, self.backlog = cluster, monitor, size, backlog
        self.submitted = 0
        self.builds = 0
        self.refusals = 0
        self._halt = threading.Event()

    def outstanding(self) -> int:
        return self.submitted - len(self.monitor.finals)

    def run(self) -> None:
        api = self.cluster.api("p1")
        while not self._halt.is_set():
            leader = self.monitor.leader
            if leader and leader[0] == "p1" and self.outstanding() < self.backlog:
                n = self.builds
                spec = {"name": f"bench{n}", "tasks": [{"id": f"t{i:05d}", "cmd": "true"} for i in range(self.size)]}
                try:
                    api.request("POST", "/api/v1/builds", spec)
                    self.builds += 1
                    self.submitted += self.size
                    continue
                except ApiError:
                    self.refusals += 1  # p1 does not lead (any more) or is starting; try again later
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(30)
