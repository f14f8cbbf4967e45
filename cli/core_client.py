"""The initiator's grants half of `baton run` (docs/design.md section 8).

`CoreClient` holds one Cores.Want stream (cluster/protocol/compile.proto) to
the leader the leader key names (followed with agent.leader.LeaderFollower,
like agents; TLS with the cluster CA and the cluster token, like agents),
says how many cores the build could use now (the compiles waiting or
running remotely, capped by --max-remote; lowered only after it stayed lower
for a tick, so that grants do not churn), and keeps the grants the leader
sends. A new leader: the stream moves to it and the old grants end. On the
same stream it reports the build's start, its finished jobs and its end
(cli/run_report.py), sending what the leader has not acknowledged again on
every new stream; `finish()` sends the end and waits (bounded) until the
leader has recorded it — unless no stream ever reached a leader (etcd
unreachable, no leader key, a leader that never answered): then nobody can
record it, and it returns at once. While no leader was ever seen, a job waits
at most FIRST_LEADER_WAIT for one, not the remote wait: the build compiles
here promptly, and its jobs go remote once a leader appears. It names the
slot of a grant each job runs in (the build monitor's lane: `acquire_core`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import grpc

from agent.leader import LeaderFollower
from cli.run_report import RunReport
from cluster.keys import Keys
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc
from lease.client import EtcdConfig, connect
from lease.errors import BatonError, ConfigError

log = logging.getLogger(__name__)

TICK = 0.5                      # s between lowering the cores wanted (see CoreClient._ticker)
FINISH_WAIT = 15.0              # s at the end for the leader to record the build (CoreClient.finish)
# s a job waits for a free helper core when --remote-wait is not given and the leader's
# lease ttl cannot be read: coordinator.config.Timings' default ttl (docs/design.md section 8).
DEFAULT_REMOTE_WAIT = 10.0
# s from the build's start that a job waits for a leader while none was ever seen (etcd
# unreachable or no leader key): one being elected right then is worth a short wait, a
# cluster that is not there is not worth the remote wait (which covers a failover).
FIRST_LEADER_WAIT = 1.0
CONTACT_WAIT = 5.0              # s finish() waits for the first attempt to reach a leader to end
RETRY = 1.0                     # s between attempts to reach an etcd that could not be reached


def remote_wait(given: float | None, lease_ttl: int | None) -> float:
    """How long a job waits for a free helper core: --remote-wait if given, else the
    cluster's lease ttl (the leader's lease), so that a job started as the leader dies
    waits out the election and goes to the new leader's helpers; else DEFAULT_REMOTE_WAIT."""
    if given is not None:
        return given
    return float(lease_ttl) if lease_ttl and lease_ttl > 0 else DEFAULT_REMOTE_WAIT


class CoreSource:
    """What the job server asks for helper cores (cli/job_server.py): `acquire_core(wait)` ->
    (pb.Grant, slot, "") or (None, -1, why), `release(grant, slot)`, and `local_at_once(wait)`.
    CoreClient is the real one; tests and benches give fixed grants by subclassing this."""

    def local_at_once(self, wait: float | None = None) -> str | None:
        """Why a job would compile locally without waiting, else None (unknown: ask acquire_core)."""
        return None

    def acquire_core(self, wait: float | None = None):
        raise NotImplementedError

    def release(self, grant, slot: int = -1) -> None:
        raise NotImplementedError


class CoreClient(CoreSource):
    """`start()`; `acquire(wait)` -> (pb.Grant, "") or (None, why); `acquire_core(wait)` ->
    (pb.Grant, slot, ""); `release(grant, slot)`; `finish(...)`; `stop()`."""

    def __init__(self, etcd: EtcdConfig, cluster: str, build: str, token: str | None = None,
                 root_certificates: bytes | None = None, cap: int | None = None,
                 client: tuple[bytes, bytes] | None = None, report: RunReport | None = None,
                 wait: float | None = None):
        self.etcd_config, self.keys, self.build = etcd, Keys(cluster), build
        self.token, self.cap = token, cap
        # None: the leader's lease ttl, read at each new leader (remote_wait).
        self.report, self.wait, self._wait_given = report, remote_wait(wait, None), wait
        self._ttl_of: int | None = None          # the lease whose ttl self.wait is
        key, chain = client if client else (None, None)
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=key,
                                                          certificate_chain=chain)
                             if root_certificates else None)
        self._cond = threading.Condition()
        self._grants: dict[str, pb.Grant] = {}   # grant id -> grant
        self._busy: dict[str, int] = {}          # grant id -> jobs in flight
        self._slots: dict[str, set[int]] = {}    # grant id -> the slots those jobs run in
        self._active = 0                         # jobs waiting for a slot or running remotely
        self._peak = 0                           # most active since the last tick
        self._sent = -1                          # the cores last asked for
        self._requests: queue.Queue | None = None
        self._call = None
        self._leaderless = True
        self._leaderless_since = time.monotonic()
        self._settled = threading.Event()        # the first answer (grants, or that there is no leader)
        self._seen_leader = False                # a leader key was ever read
        self.reached = False                     # a leader ever answered on a Cores stream
        self._stopping = threading.Event()
        self._changed = threading.Event()
        self._etcd = None
        self._follower: LeaderFollower | None = None
        self.helpers_used: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "CoreClient":
        threading.Thread(target=self._run, name="cores", daemon=True).start()
        threading.Thread(target=self._ticker, name="cores-ticker", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        self._end_call()
        if self._follower is not None:
            self._follower.stop()
        if self._etcd is not None:
            self._etcd.close()

    def _run(self) -> None:
        if not self._follow():
            return
        while not self._stopping.is_set():
            leader = self._follower.current
            if leader is None:
                self._set_grants([], leaderless=True)
                self._changed.wait(1.0)
                self._changed.clear()
                continue
            if not self._seen_leader:
                with self._cond:
                    self._seen_leader = True   # jobs waiting for a first leader may now wait longer
                    self._cond.notify_all()
            self._learn_wait(leader)
            self._hold_stream(leader)
            self._set_grants([], leaderless=False)
            self._changed.wait(0.2)   # a refused or broken stream: try again soon (or on a leader change)
            self._changed.clear()

    def _follow(self) -> bool:
        """Follow the leader key; an etcd that cannot be reached is tried again every RETRY s
        (the build compiles here meanwhile). False: stopped first."""
        follower = None
        while not self._stopping.is_set():
            try:
                if follower is None:
                    self._etcd = connect(self.etcd_config)
                    follower = LeaderFollower(self._etcd, self.keys.leader, self._on_leader)
                follower.start()
                self._follower = follower
                if self._stopping.is_set():   # stop() came meanwhile and did not see it
                    follower.stop()
                    return False
                return True
            except BatonError as exc:
                if not self._settled.is_set():
                    log.info("baton run: no leader to ask for helper cores (%s); compiling here", exc)
                    self._settled.set()
                if isinstance(exc, ConfigError):
                    return False   # bad options: trying again cannot help
            self._stopping.wait(RETRY)
        return False

    def _learn_wait(self, leader) -> None:
        """Without --remote-wait: the wait is this leader's lease ttl (one etcd read a leader)."""
        if self._wait_given is not None or leader.lease_id == self._ttl_of:
            return
        try:
            ttl = self._etcd.lease_granted_ttl(leader.lease_id) if leader.lease_id else None
        except BatonError as exc:   # e.g. etcd auth lets this user read the key, not its lease
            log.info("baton run: cannot read the leader's lease ttl (%s); waiting %g s for helper cores",
                     exc, DEFAULT_REMOTE_WAIT)
            ttl = None
        self._ttl_of = leader.lease_id
        self.wait = remote_wait(None, ttl)

    def _on_leader(self, view) -> None:
        self._end_call()   # the stream is to the old leader: its grants end with its epoch
        self._changed.set()

    def _end_call(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()

    def _hold_stream(self, leader) -> None:
        channel = (grpc.secure_channel(leader.grpc, self._credentials) if self._credentials
                   else grpc.insecure_channel(leader.grpc))
        requests: queue.Queue = queue.Queue()
        with self._cond:
            self._sent = self._wanted()
            if self.report is None:
                requests.put(pb.CoreRequest(build=self.build, cores=self._sent))
            else:   # the start, and every report not yet acknowledged (a new leader's first hearing)
                self.report.poll()
                for request in self.report.requests(self._sent):
                    requests.put(request)
            self._requests = requests
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        try:
            self._call = compile_pb2_grpc.CoresStub(channel).Want(iter(requests.get, None), metadata=metadata)
            for reply in self._call:
                self.reached = True
                if self.report is not None:
                    self.report.acknowledge(reply)   # _set_grants wakes finish()
                self._set_grants(reply.grants, leaderless=False)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.info("baton run: the cores stream to %s ended: %s", leader.name, exc.details())
        finally:
            with self._cond:
                self._requests = None
            requests.put(None)
            self._call = None
            channel.close()

    # -- grants and demand ------------------------------------------------------------------
    def _set_grants(self, grants, leaderless: bool) -> None:
        with self._cond:
            self._grants = {g.grant: g for g in grants}
            self._busy = {g: self._busy.get(g, 0) for g in self._grants}
            self._slots = {g: self._slots[g] for g in self._grants if g in self._slots}
            if leaderless and not self._leaderless:
                self._leaderless_since = time.monotonic()
            self._leaderless = leaderless
            self._cond.notify_all()
        self._settled.set()

    def _wanted(self) -> int:
        wanted = max(self._active, self._peak)
        return wanted if self.cap is None else min(self.cap, wanted)

    def _ask(self) -> None:
        """With the lock held: send the cores wanted if they changed."""
        wanted = self._wanted()
        if wanted != self._sent and self._requests is not None:
            self._sent = wanted
            busy = {grant: n for grant, n in self._busy.items() if n > 0}
            self._requests.put(pb.CoreRequest(build=self.build, cores=wanted, busy=busy))

    def _ticker(self) -> None:
        while not self._stopping.wait(TICK):
            with self._cond:
                self._ask()
                self._peak = self._active
                self._report_jobs()

    def _report_jobs(self) -> None:
        """With the lock held: send the jobs finished since the last look (acknowledged later)."""
        if self.report is None:
            return
        new = self.report.poll()
        if new and self._requests is not None:
            for request in self.report.jobs_request(new, max(self._sent, 0)):
                self._requests.put(request)

    def finish(self, exit_code: int, wall: float, figures: dict, timeout: float = FINISH_WAIT) -> bool:
        """Report the end (with the last jobs) and wait until the leader recorded it: at most
        `timeout` s, and no longer than `wait` s without a leader (a new one may come). When
        no leader ever answered (`reached` stays False), nobody can record it: only the first
        attempt to reach one is waited for (at most CONTACT_WAIT s), e.g. for a COMMAND that
        ended before the stream was open, not the record."""
        if self.report is None:
            return False
        deadline = time.monotonic() + timeout
        if not self.reached:
            # The first outcome is an answer (reached), or etcd unreachable, no leader key, or
            # a stream that ended unanswered: then no coordinator was reached.
            self._settled.wait(min(timeout, CONTACT_WAIT))
            if not self.reached:
                return False
        with self._cond:
            self._report_jobs()
            end = self.report.finish(exit_code, wall, figures)
            self._sent = 0   # COMMAND is over: its grants go back
            if self._requests is not None:
                self._requests.put(pb.CoreRequest(build=self.build, cores=0, end=end))
            while not self.report.complete:
                now = time.monotonic()
                leaderless = self._leaderless and (self._follower is None or now - self._leaderless_since > self.wait)
                if now >= deadline or leaderless:
                    log.info("baton run: the cluster did not record the build's end (%d job reports "
                             "unacknowledged)", self.report.unacknowledged)
                    return False
                self._cond.wait(min(0.1, deadline - now))
        return True
    def acquire(self, wait: float | None = None) -> tuple[pb.Grant | None, str]:
        """A slot of a grant for one job, or (None, why it compiles locally)."""
        grant, _, why = self.acquire_core(wait)
        return grant, why

    def local_at_once(self, wait: float | None = None) -> str | None:
        """Why acquire_core(wait) would answer "locally" without waiting (leaderless past the
        bound acquire_core waits for a leader), else None. The job server skips the scan of a
        job that compiles locally anyway (cli/job_server.py). Waits for the cluster's first
        answer as acquire_core does (only a build's first jobs do)."""
        wait = self.wait if wait is None else wait
        if not self._settled.wait(wait):
            return None
        with self._cond:
            if self._leaderless:   # acquire_core's bound
                bound = wait if self._seen_leader else min(wait, FIRST_LEADER_WAIT)
                if time.monotonic() - self._leaderless_since >= bound:
                    return "no leader"
        return None

    def acquire_core(self, wait: float | None = None) -> tuple[pb.Grant | None, int, str]:
        """(grant, the slot of it the job takes, "") or (None, -1, why it compiles locally).
        wait: at most this many s; None: self.wait."""
        wait = self.wait if wait is None else wait
        deadline = time.monotonic() + wait
        # The first answer comes within etcd's timeout (EtcdConfig.timeout) even from an etcd that
        # does not answer; then a build that never saw a leader waits FIRST_LEADER_WAIT at most.
        if not self._settled.wait(wait):
            return None, -1, f"no answer from the cluster within {wait:g} s"
        with self._cond:
            self._active += 1
            self._peak = max(self._peak, self._active)
            # Only raise it here: a lower want (the ticker reset the peak in a lull) would let
            # the leader take back grants this job and the burst after it are about to use.
            if self._wanted() > self._sent:
                self._ask()
            while True:
                free = [g for g in self._grants.values() if self._busy.get(g.grant, 0) < g.slots]
                if free:
                    grant = min(free, key=lambda g: self._busy[g.grant] / g.slots)
                    self._busy[grant.grant] += 1
                    taken = self._slots.setdefault(grant.grant, set())
                    slot = min(set(range(grant.slots)) - taken, default=len(taken))
                    taken.add(slot)
                    return grant, slot, ""
                left = deadline - time.monotonic()
                why = "no leader" if self._leaderless else f"no free helper core within {wait:g} s"
                if self._leaderless:   # waiting is worth it only for a leader that is being elected
                    bound = wait if self._seen_leader else min(wait, FIRST_LEADER_WAIT)
                    left = min(left, self._leaderless_since + bound - time.monotonic())
                if left <= 0:
                    self._active -= 1
                    return None, -1, why
                self._cond.wait(left)

    def release(self, grant: pb.Grant, slot: int = -1) -> None:
        with self._cond:
            self._active -= 1
            self._slots.get(grant.grant, set()).discard(slot)
            if grant.grant in self._busy:
                self._busy[grant.grant] -= 1
            self._cond.notify_all()
