"""The faults of bench/chaos.py: a schedule drawn from a seed, and the hands that apply it.

`schedule(seed, ...)` depends on nothing but its arguments, so a failing seed
gives the same faults in the same order with the same holds and gaps (the
cluster's own timing differs from run to run, as it would in production).
Faults run one after the other; each is healed after its hold (the killed
process restarted, the paused one resumed, the cut link passed again).
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time

KINDS = ("kill-coordinator", "pause-coordinator", "cut-coordinator", "kill-etcd", "kill-agent", "switchover")
COORDINATORS = {"p1": "primary", "b1": "backup"}


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float      # seconds after the start of the fault phase (the earliest it is applied)
    kind: str
    target: str    # leader/standby (the coordinator leading when it is applied, or the other
                   # one), an etcd member m0.., an agent a1.., or "" (switchover: whoever leads)
    hold: float    # seconds until it is healed (0 for a switchover)

    def __str__(self) -> str:
        hold = f" for {self.hold:.1f} s" if self.hold else ""
        return f"+{self.at:7.1f} s  {self.kind:<18} {self.target or 'leader':<7}{hold}"


def schedule(seed: int, seconds: float, ttl: float, agents: int, members: int) -> list[Fault]:
    """The faults of a run: a gap of 1.5-3 ttl between the end of one and the next, holds of
    0.5-2.5 ttl (so that some pauses and cuts outlast the lease and some do not)."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = rng.uniform(1.5, 3.0) * ttl
    while t < seconds:
        kind = rng.choice(KINDS)
        if kind.endswith("coordinator"):
            target = rng.choice(("leader", "leader", "leader", "standby"))  # mostly where it hurts
        elif kind == "kill-etcd":
            target = f"m{rng.randrange(members)}"
        elif kind == "kill-agent":
            target = f"a{rng.randrange(agents) + 1}"
        else:
            target = ""
        hold = 0.0 if kind == "switchover" else round(rng.uniform(0.5, 2.5) * ttl, 2)
        faults.append(Fault(round(t, 2), kind, target, hold))
        t += hold + rng.uniform(1.5, 3.0) * ttl
    return faults


class Hands:
    """Applies faults to a LocalCluster on an EtcdCluster, coordinators reaching etcd through
    proxies (`proxies[name]`: one per member, cut together)."""

    def __init__(self, cluster, etcd_cluster, proxies: dict, stop: threading.Event):
        self.cluster, self.etcd_cluster, self.proxies, self.stop = cluster, etcd_cluster, proxies, stop

    def coordinator(self, role: str) -> str:
        """The coordinator that leads now (role "leader"; p1 when nobody does), or the other one."""
        leader = self.cluster.leader()
        leading = leader.name if leader is not None and leader.name in COORDINATORS else "p1"
        return leading if role == "leader" else next(n for n in COORDINATORS if n != leading)

    def resolve(self, fault: Fault) -> Fault:
        """The fault with its coordinator named (leader/standby as things stand now)."""
        if fault.kind.endswith("coordinator"):
            return dataclasses.replace(fault, target=self.coordinator(fault.target))
        return fault

    def apply(self, fault: Fault) -> str:
        """Apply and heal one (resolved) fault; returns what happened (e.g. why a switchover was refused)."""
        c = self.cluster
        if fault.kind == "switchover":
            leader = c.leader()
            if leader is None:
                return "no leader to ask"
            try:
                c.api(leader.name).switchover()
            except Exception as exc:  # noqa: BLE001 - a refused switchover is an outcome, reported
                return f"refused by {leader.name}: {exc}"
            return f"asked {leader.name}"
        if fault.kind == "kill-coordinator":
            c.coordinators[fault.target].kill()
            self.stop.wait(fault.hold)
            c.add_coordinator(fault.target, COORDINATORS[fault.target])
        elif fault.kind == "pause-coordinator":
            proc = c.coordinators[fault.target]
            proc.pause()
            try:
                self.stop.wait(fault.hold)
            finally:
                proc.resume()
        elif fault.kind == "cut-coordinator":
            for proxy in self.proxies[fault.target]:
                proxy.set_mode("blackhole")
            try:
                self.stop.wait(fault.hold)
            finally:
                for proxy in self.proxies[fault.target]:
                    proxy.set_mode("pass")
        elif fault.kind == "kill-etcd":
            i = int(fault.target[1:])
            self.etcd_cluster.kill(i)
            self.stop.wait(fault.hold)
            self.etcd_cluster.restart(i, wait=False)
        elif fault.kind == "kill-agent":
            c.agents[fault.target].kill()
            self.stop.wait(fault.hold)
            c.add_agent(fault.target)
        leader = c.leader()
        return f"leader now {leader.name if leader else 'nobody'}"

    def heal_all(self) -> None:
        """Everything up and linked again (after an interrupted fault)."""
        for proxies in self.proxies.values():
            for proxy in proxies:
                proxy.set_mode("pass")
        for i, member in enumerate(self.etcd_cluster.members):
            if not member.alive:
                self.etcd_cluster.restart(i, wait=False)
        for name, role in COORDINATORS.items():
            proc = self.cluster.coordinators.get(name)
            if proc is None or not proc.alive:
                self.cluster.add_coordinator(name, role)
            else:
                proc.resume()
        for name, proc in list(self.cluster.agents.items()):
            if not proc.alive:
                self.cluster.add_agent(name)


class LeaderLog:
    """When the leader key was held and by whom, as a watch of it saw (monotonic times)."""

    def __init__(self):
        self.changes: list[tuple[float, str | None, int]] = []  # (time, holder or None, epoch)
        self._lock = threading.Lock()

    def note(self, holder: str | None, epoch: int) -> None:
        with self._lock:
            self.changes.append((time.monotonic(), holder, epoch))

    def at(self, t: float) -> tuple[str | None, int]:
        """(holder, epoch) in force at monotonic time t, as far as the watch saw."""
        with self._lock:
            seen = [(holder, epoch) for when, holder, epoch in self.changes if when <= t]
        return seen[-1] if seen else (None, 0)

    def leaderless(self, start: float, end: float, stale_epoch: int = 0, stale_until: float = 0.0) -> float:
        """Seconds between start and end with nobody able to lead: no leader key, or one that
        still names `stale_epoch` before `stale_until` (a killed leader's key until its lease
        expires; a paused or cut-off leader's while the fault holds)."""
        with self._lock:
            changes = [c for c in self.changes if c[0] < end]
        # Cut [start, end) at every change and at stale_until; sum the pieces nobody can lead in.
        cuts = sorted({start, end, *(t for t, _, _ in changes if t > start),
                       *([stale_until] if start < stale_until < end else [])})
        total = 0.0
        for a, b in zip(cuts, cuts[1:]):
            holder, epoch = self.at(a)
            if holder is None or (stale_epoch and epoch == stale_epoch and a < stale_until):
                total += b - a
        return total
