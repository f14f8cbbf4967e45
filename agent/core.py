"""The agent: presence, leader following, one stream, tasks, buffered results.

One main-loop thread makes every decision from the current state (the
leader view, the open link) and is the owner whose liveness keeps the agent's
lease alive: each turn it heartbeats the session, closes the link when the
leader key no longer names its coordinator/epoch, opens one to the leader the
key names, and keeps the presence key's value up to date. Other threads
(the leader watch, the link, task threads) only record what happened and
wake the loop.

Results are buffered (memory + `<workdir>/.results/`) from the moment a task
ends until a ResultAck arrives, whoever leads meanwhile; the Hello of every
new stream carries the unacknowledged ones. Running tasks are never touched
by a leader change.

Over 400 lines: the main loop and everything it decides (link, standby link
for a planned handover, presence, assignments, result acks) share the one
state the loop owns; splitting it would hand that state across modules. The
parts that own no such state are their own modules (leader.py, link.py,
presence.py, results.py, runner.py, helper.py).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

from agent.channels import Channels
from agent.config import AgentConfig, agent_version
from agent.helper import Grants, HelperServer
from agent.leader import LeaderFollower
from agent.link import CoordinatorLink
from agent.presence import AgentLease, Presence
from agent.results import ResultBuffer
from agent.runner import Runner, TaskRef, TaskResult
from cluster.keys import Keys
from cluster.protocol import agent_pb2
from cluster.records import AgentRecord, LeaderRecord
from lease.client import Etcd, connect
from lease.errors import ConfigError, EtcdError

log = logging.getLogger(__name__)

LEADERLESS_HOLD = 1.0   # s a welcomed stream is kept after the leader key is deleted (see _through_the_gap)


def ref_from_proto(ref: agent_pb2.TaskRef) -> TaskRef:
    return TaskRef(ref.build_id, ref.task_id, int(ref.attempt))


def ref_to_proto(ref: TaskRef) -> agent_pb2.TaskRef:
    return agent_pb2.TaskRef(build_id=ref.build_id, task_id=ref.task_id, attempt=ref.attempt)


def result_to_proto(result: TaskResult) -> agent_pb2.TaskResult:
    return agent_pb2.TaskResult(task=ref_to_proto(result.task), exit_code=result.exit_code,
                                duration=result.duration, output_tail=result.output_tail,
                                error=result.error)


class Agent:
    """`Agent(config).start()` ... `stop()`, or `run()` from the CLI.

    The keyword arguments exist for the bench pool (bench.pool): a shared
    etcd client, a shared lease, links on one event loop (bench.aio_link),
    watches sharing one etcd stream (bench.watch_mux), a runner that does not spawn processes,
    a memory-only result buffer, and a slower loop (it has no lease to tick).
    """

    def __init__(self, config: AgentConfig, *, etcd: Etcd | None = None, lease: AgentLease | None = None,
                 runner_factory: Callable[[Callable[[TaskResult], None]], object] | None = None,
                 results: ResultBuffer | None = None, loop_interval: float | None = None,
                 wake: threading.Event | None = None,
                 channels: Channels | None = None, watch: Callable | None = None,
                 link_factory: Callable[..., CoordinatorLink] | None = None):
        self.config = config
        self.keys = Keys(config.cluster)
        self._owns_etcd = etcd is None
        self.etcd = etcd if etcd is not None else connect(config.etcd)
        self._owns_lease = lease is None
        self.lease = lease if lease is not None else AgentLease(self.etcd, ttl=config.lease_ttl)
        self.presence = Presence(self.etcd, self.keys.agent(config.name), self.lease)
        self.results = results if results is not None else ResultBuffer.in_workdir(config.workdir)
        if runner_factory is None:
            self.runner = Runner(config.workdir, self._on_result, default_timeout=config.task_timeout,
                                 task_user=config.resolved_task_user())
        else:
            self.runner = runner_factory(self._on_result)
        self.follower = LeaderFollower(self.etcd, self.keys.leader, self._on_leader_change, watch)
        self.version = agent_version()
        self._owns_channels = channels is None
        self.channels = channels if channels is not None else Channels(config.root_certificates(), config.client_certificate())
        self._link_factory = link_factory
        # Heartbeat the session well within its renew_deadline.
        self.loop_interval = loop_interval or min(0.25, self.lease.renew_deadline / 4)
        self.lock = threading.RLock()
        self._link: CoordinatorLink | None = None
        self._following = False
        self._next_follow_try = 0.0
        # Set whenever something happened that the loop must look at; the
        # bench pool, which turns its agents itself, passes its own wake-up
        # (anything with set()) that marks this agent due.
        self._wake = wake if wake is not None else threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._old_links: list[CoordinatorLink] = []
        # A stream held open to the coordinator the leader names as its successor (on_message).
        self._standby: CoordinatorLink | None = None
        self._standby_from: tuple | None = None   # identity of the leader that announced the successor
        self._leaderless_since: float | None = None   # when the leader key was first seen gone
        # Compile jobs on lent cores (agent/helper.py): the grants come on the stream (Lend/Unlend).
        self.grants = Grants(on_carried=self._compiling_changed)
        self.helper: HelperServer | None = None
        self.helper_address: str | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self, run_loop: bool = True) -> "Agent":
        """Load results an earlier run left, then start the main loop (unless
        run_loop is False: then the owner calls tick() itself, as the bench
        pool does). etcd need not be reachable yet: the loop keeps trying."""
        loaded = self.results.load()
        if loaded:
            log.info("%d unacknowledged result(s) from an earlier run will be delivered", len(loaded))
        mark_seen = getattr(self.runner, "mark_seen", None)
        if mark_seen is not None:
            mark_seen(r.task for r in loaded)
        problem = self.config.helper_cert_problem() if self.config.helper_listen is not None else None
        if problem is not None and self.helper is None:
            # Every initiator would refuse its TLS: offer no Helper service rather than one that
            # sends every job back to compile locally without a word (docs/design.md section 8).
            log.warning("not serving compile jobs: %s; issue this agent's certificate again "
                        "(baton certs agent --name %s) to serve them", problem, self.config.name)
        elif self.config.helper_listen is not None and self.helper is None:
            self.helper = HelperServer(self.config.helper_listen, self.grants, self.seen_epoch,
                                       workers=self.config.cores + 4, tls=self.config.helper_tls(),
                                       workdir=self.config.workdir)
            try:
                self.helper.start()
            except (OSError, RuntimeError) as exc:
                raise ConfigError(f"cannot serve compile jobs on --helper-listen {self.config.helper_listen}: "
                                  f"{exc}") from None
            self.helper_address = self.helper.address(self.config.host)
            log.info("serving compile jobs on %s", self.helper_address)
        if run_loop:
            self._thread = threading.Thread(target=self._loop, name=f"agent {self.config.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the stream, kill running tasks (their results are not
        reported), withdraw the presence key. Safe to call twice."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self.lock:
            link, self._link = self._link, None
            standby, self._standby = self._standby, None
        if standby is not None:
            self._old_links.append(standby)
        for old in [*self._old_links, *([link] if link else [])]:
            old.close()
        self.follower.stop()
        if self.helper is not None:
            self.helper.stop()
        stop_runner = getattr(self.runner, "stop", None)
        if stop_runner is not None:
            stop_runner()
        for old in [*self._old_links, *([link] if link else [])]:
            old.join(2.0)
        self._old_links.clear()
        if self._owns_channels:
            self.channels.close()
        if self._owns_lease:
            self.lease.close()
        else:
            self.presence.withdraw()
        if self._owns_etcd:
            self.etcd.close()

    def run(self) -> None:
        """Start and block until SIGTERM or SIGINT (main thread only), then
        stop: running tasks are killed and will run again elsewhere."""
        def on_signal(signum, _frame):
            log.info("received %s; stopping", signal.Signals(signum).name)
            self._stopping.set()
            self._wake.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._stopping.is_set():
                self._stopping.wait(1.0)
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- views for tests and the bench ---------------------------------------------
    @property
    def leader(self) -> LeaderRecord | None:
        return self.follower.current

    @property
    def connected_to(self) -> str | None:
        """Name of the coordinator this agent is linked with (Welcome received), or None."""
        link = self._link
        return link.coordinator if link is not None and link.welcomed else None

    @property
    def link(self) -> CoordinatorLink | None:
        return self._link

    # -- the main loop --------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must keep turning (it holds the lease)
                log.exception("agent loop turn failed")
            self._wake.wait(self.loop_interval)
            self._wake.clear()

    def tick(self) -> None:
        """One turn: lease, leader watch and link, then presence."""
        if self._owns_lease:
            self.lease.tick()
        self.tick_link()
        self.tick_presence()

    def tick_link(self) -> None:
        """Follow the leader key: start watching it if not yet, and make the
        link match it. No etcd I/O once the watch runs."""
        if not self._following and time.monotonic() >= self._next_follow_try:
            try:
                self.follower.start()
                self._following = True
            except EtcdError as exc:
                log.warning("cannot read the leader key yet: %s", exc)
                self._next_follow_try = time.monotonic() + 1.0
        self._reconcile_link(self.follower.current)
        self._old_links = [old for old in self._old_links if old.alive]

    def tick_presence(self) -> None:
        """Write the presence key if its value or the lease changed (one etcd write at most)."""
        self.presence.sync(self.presence_value())

    def _reconcile_link(self, leader: LeaderRecord | None) -> None:
        with self.lock:
            link = self._link
            if link is not None and not link.alive:
                log.error("the stream to %s ended unexpectedly; opening a new one", link.leader)
                self._link = link = None
            if self._through_the_gap(link, leader):
                return
            if link is not None and (leader is None or link.leader.identity != leader.identity):
                log.info("leader is now %s: closing the stream to %s; running tasks continue",
                         leader or "nobody", link.leader)
                self._link = None
                self._link_to(leader)  # first: the Hello to the new leader goes out before the old stream ends
                link.close()
                self._old_links.append(link)
                return
            self._link_to(leader)

    def _through_the_gap(self, link: CoordinatorLink | None, leader: LeaderRecord | None) -> bool:
        """True while the leader key has been gone for less than LEADERLESS_HOLD
        and our stream is up: keep it for now. A planned handover deletes the
        key and the next leader's put follows ~0.1 s later; closing the stream
        at the delete (and writing presence "not linked") made 200 agents do
        that work, and etcd carry the writes, just when the move needed the
        machine. Keeping it is safe: the old leader no longer dispatches, and
        any message it sends now ends the stream (rule 4, LinkBase._take)."""
        if leader is not None:
            self._leaderless_since = None
            return False
        now = time.monotonic()
        if self._leaderless_since is None:
            self._leaderless_since = now
        return link is not None and link.welcomed and now - self._leaderless_since < LEADERLESS_HOLD

    def _link_to(self, leader: LeaderRecord | None) -> None:
        """Open the link to `leader` (over its standby stream if we hold one) if there is none."""
        with self.lock:
            link = self._link
            standby = self._standby
            if standby is not None and (not standby.alive or (
                    leader is not None and leader.identity != self._standby_from
                    and leader.name != standby.leader.name)):
                self._drop_standby()  # someone else leads now: the coordinator it waits for did not take over
            if link is None and leader is not None and not self._stopping.is_set():
                standby, self._standby = self._standby, None
                if standby is not None and standby.activate(leader):
                    self._link = standby  # already connected: moving costs one Hello
                    return
                if standby is not None:
                    standby.close()
                    self._old_links.append(standby)
                self._link = self._new_link(leader)

    def _new_link(self, leader: LeaderRecord, standby: bool = False) -> CoordinatorLink:
        if self._link_factory is not None:
            return self._link_factory(leader, self, token=self.config.agent_token, agent_name=self.config.name,
                                      standby=standby).start()
        return CoordinatorLink(leader, self, self.channels, token=self.config.agent_token,
                               agent_name=self.config.name, standby=standby).start()

    def _drop_standby(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            standby.close()
            self._old_links.append(standby)

    def _stand_by_for(self, successor: agent_pb2.Successor, announced_by: LeaderRecord) -> None:
        """The leader expects `successor` to lead after it (its backup, its
        primary, a switchover's target): open a stream to it now and hold it
        (a Standby) until the leader key names it."""
        with self.lock:
            self._standby_from = announced_by.identity
            current = self._standby
            if current is not None and current.alive and (current.leader.name, current.leader.grpc) == (
                    successor.name, successor.grpc):
                return
            self._drop_standby()
            if self._stopping.is_set() or not successor.grpc:
                return
            view = LeaderRecord(name=successor.name, role="", epoch=0, grpc=successor.grpc)
            self._standby = self._new_link(view, standby=True)

    def presence_value(self) -> AgentRecord:
        """What agents/<name> should hold now (the UI shows the coordinator it is linked with)."""
        link = self._link
        welcomed = link is not None and link.welcomed
        return AgentRecord(name=self.config.name, host=self.config.host, cores=self.config.cores,
                           group=self.config.group, version=self.version,
                           coordinator=link.leader.name if welcomed else None,
                           epoch=link.epoch if welcomed else None, helper=self.helper_address)

    def _on_leader_change(self, view: LeaderRecord | None) -> None:
        log.info("leader key: %s", view or "nobody leads")
        if view is not None:
            self.grants.follow(view.epoch)   # an older leader's grants take no new jobs (rule 4)
        self._wake.set()

    # -- LinkHandler ---------------------------------------------------------------
    def seen_epoch(self) -> int | None:
        view = self.follower.current
        return view.epoch if view is not None else None

    def recheck_leader(self) -> None:
        self.follower.reread()
        self._wake.set()

    def on_link_state(self, link: CoordinatorLink) -> None:
        self._wake.set()

    def hello(self) -> agent_pb2.Hello:
        """Called by the link with self.lock held, so no result slips between
        this snapshot and the stream opening for results."""
        cfg = self.config
        return agent_pb2.Hello(
            name=cfg.name, host=cfg.host, cores=cfg.cores, group=cfg.group, version=self.version,
            running=[ref_to_proto(r) for r in self.runner.running()],
            results=[result_to_proto(r) for r in self.results.pending()],
            compiling=self.grants.new_stream())

    def _compiling_changed(self, jobs: int) -> None:
        """Fewer compile jobs of ended grants run (agent/helper.Grants): tell the leader, whose
        count keeps those cores busy. Lost with a stream that ended: the next Hello counts anew."""
        with self.lock:
            link = self._link
            if link is not None:   # queued after its Hello, if its stream is open
                link.send(link.message(compiling=agent_pb2.Compiling(jobs=jobs)))

    def on_message(self, link: CoordinatorLink, msg: agent_pb2.CoordinatorMessage) -> None:
        if link is not self._link:
            return  # a link being closed: its coordinator is not ours any more
        kind = msg.WhichOneof("body")
        if kind == "welcome":
            for ref in map(ref_from_proto, msg.welcome.cancel):
                self._drop(ref, f"{link.leader.name} no longer wants it")
        elif kind == "assign":
            self._assign(link, msg.assign)
        elif kind == "ack":
            self.results.ack(ref_from_proto(msg.ack.task))
        elif kind == "cancel":
            self._drop(ref_from_proto(msg.cancel.task), f"{link.leader.name} cancelled it")
        elif kind == "lend":
            self.grants.lend(msg.lend.grant, msg.lend.slots, msg.epoch)
        elif kind == "unlend":
            self.grants.unlend(msg.unlend.grant)
        elif kind == "successor":
            log.info("%s names %s as the next leader; holding a stream to it", link.leader.name,
                     msg.successor.name)
            self._stand_by_for(msg.successor, link.leader)

    def _assign(self, link: CoordinatorLink, assignment: agent_pb2.Assignment) -> None:
        ref = ref_from_proto(assignment.task)
        if self.runner.start(ref, assignment.cmd, assignment.timeout, dict(assignment.env)):
            # One line per run, which the fault tests' checker reads (bench/history_check.py):
            # what the agent obeyed, and under which leader's epoch.
            log.info("running task %s for %s (epoch %d)", ref, link.leader.name, link.epoch)
            return
        with self.lock:
            buffered = self.results.get(ref)
            if buffered is not None:
                link.send(link.message(result=result_to_proto(buffered)))
        log.info("task %s was assigned again; it already ran here, not running it twice", ref)

    def _drop(self, ref: TaskRef, why: str) -> None:
        if self.runner.cancel(ref):
            log.info("killed task %s: %s", ref, why)
        self.results.ack(ref)  # a result the coordinator does not want is not kept either

    # -- results ---------------------------------------------------------------------
    def _on_result(self, result: TaskResult) -> None:
        """A task ended: buffer the result (durably), then offer it on the open stream."""
        with self.lock:
            self.results.add(result)
            link = self._link
            if link is not None:
                link.send(link.message(result=result_to_proto(result)))
        log.info("task %s finished: exit %d%s", result.task, result.exit_code,
                 f" ({result.error})" if result.error else "")
