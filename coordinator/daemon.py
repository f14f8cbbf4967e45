"""The coordinator daemon: the HA loop that decides who leads, and acts on it.

One loop per coordinator (primary or backup):

    read one snapshot (coordinator.snapshot) -> decide (coordinator.ha) -> act

Each cycle has one sentence, logged when it changes. The loop also ticks the
session's heartbeat, so the lease is renewed only while this loop is alive
(docs/design.md section 3, rule 6): a wedged loop loses leadership like a dead
process. The session thread reports loss on its own after renew_deadline
and stops the runtime at once, whatever the loop is doing (rule 3).

The daemon owns the etcd Session, the gRPC server the agents talk to, the
Runtime (the leader's work), and the web UI's gunicorn process. It decides
nothing itself: ha.decide returns the action with everything needed to carry
it out. The rest is in modules of one job each: coordinator.leadership (the
actions: campaign, take up, hand over, step down, contact and deselection;
owns the Election), coordinator.presence (the registration key and the state
file), coordinator.handover_watch (the watches that wake the loop and catch
a planned handover), coordinator.leader_probe (the coordinator that would
lead next watches the leader's process, so a crash is taken over in
milliseconds, not at the lease's expiry), coordinator.serving (gRPC server,
web process, advertised addresses).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

from cluster.keys import Keys, encode
from coordinator import ha, serving
from coordinator.config import CoordinatorConfig
from coordinator.handover_watch import HandoverWatch
from coordinator.leader_probe import LeaderProbe
from coordinator.leadership import Leadership
from coordinator.presence import Presence
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from coordinator.snapshot import read_snapshot
from coordinator.systemd import Notifier
from lease.client import connect
from lease.election import Election
from lease.errors import EtcdError, EtcdUnavailable
from lease.session import Session

log = logging.getLogger("baton.coordinator")


class Coordinator:
    """A primary or backup coordinator. `start()`, then `run(stop_event)`, then `stop()`."""

    def __init__(self, config: CoordinatorConfig, state_dir: str, *,
                 start_ui: Callable[[CoordinatorConfig, str], Any] | None = None, test_hooks: bool = False,
                 startup_wait: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, notifier: Notifier | None = None):
        self.config = config
        self.keys = Keys(config.cluster)
        self.state_dir = state_dir
        self.state_path = os.path.join(state_dir, f"{config.name}.state.json")
        self.clock = clock
        self.wall = wall
        self.timings = config.timings
        self.cycle_interval = min(0.5, self.timings.keepalive_interval / 2)
        # start_ui(config, state_path) starts the web UI and returns its process
        # (web.serve.start_gunicorn); the daemon does not import the UI.
        self._start_ui = start_ui
        self._test_hooks = test_hooks
        self.startup_wait = startup_wait
        self._wake = threading.Event()
        self._wedged = threading.Event()
        self._lock = threading.RLock()
        self.grpc_address = serving.grpc_address(config)
        self.web_address = serving.web_address(config)
        self.etcd = None
        self.session: Session | None = None
        self.runtime: Runtime | None = None
        self.leadership: Leadership | None = None   # the actions; owns the Election
        self.presence: Presence | None = None       # registration key and state file
        self.watch: HandoverWatch | None = None
        self.probe: LeaderProbe | None = None   # watches the leader's process (ha.probe_target)
        self.grpc_server: AioAgentServer | None = None
        self.web_proc = None
        self._last_sentence = ""
        self._primary_ready_since: float | None = None  # by self.clock; see ha.primary_ready_since
        self._ready = False
        # systemd (Type=notify, WatchdogSec): a no-op outside systemd ($NOTIFY_SOCKET unset).
        self.notifier = notifier if notifier is not None else Notifier()

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        """Connect, serve gRPC, register, start the UI. Raises EtcdUnavailable or ConfigError
        with one sentence when etcd cannot be reached or the config is wrong."""
        os.makedirs(self.state_dir, exist_ok=True)
        # No single etcd call may outlast most of renew_deadline: a cycle blocked on a
        # dead endpoint would otherwise starve the session of heartbeats.
        timeout = min(self.config.etcd.timeout, self.timings.renew_deadline * 0.75)
        self.etcd = connect(dataclasses.replace(self.config.etcd, timeout=timeout))
        self._wait_for_etcd()
        self.runtime = Runtime(self.etcd, self.keys, self.config.name, self.timings,
                               agent_token=self.config.agent_token, on_not_leader=self._on_not_leader)
        initial = {"selected_backup": self.config.initial_backup} if self.config.initial_backup else None
        self.leadership = Leadership(self.etcd, self.keys, self.config.name, self.runtime,
                                     self._leader_value(), wall=self.wall, initial_settings=initial)
        self.presence = Presence(self.etcd, self.keys, self.config, self.state_path,
                                 grpc=self.grpc_address, web=self.web_address)
        self.watch = HandoverWatch(self.etcd, self.keys, self._wake)
        self.grpc_server = serving.start_grpc(self.config, self.runtime)
        self._new_session()
        self._ensure_registered()
        self.watch.start()
        self.probe = LeaderProbe(self._wake.set)
        self.probe.start()
        if self._start_ui is not None:
            self.web_proc = self._start_ui(self.config, self.state_path)
        self._ready = True
        if self._test_hooks:
            signal.signal(signal.SIGUSR1, lambda *_: self._wedged.set())
        log.info("coordinator %s (%s) started: gRPC %s, web %s", self.config.name, self.config.role,
                 self.grpc_address, self.web_address)
        self.notifier.ready(f"{self.config.name} ({self.config.role}) started")

    def _leader_value(self) -> bytes:
        return encode({"name": self.config.name, "role": self.config.role,
                       "grpc": self.grpc_address, "web": self.web_address})

    def _wait_for_etcd(self) -> None:
        """etcd may still be starting (compose, systemd): retry for startup_wait seconds,
        then give up with one sentence."""
        deadline = self.clock() + self.startup_wait
        while True:
            try:
                self.etcd.revision(self.keys.leader)  # a key the coordinator role may read
                return
            except EtcdUnavailable as exc:
                if self.clock() >= deadline:
                    raise EtcdUnavailable(f"etcd did not answer within {self.startup_wait:g} s ({exc})") from None
                log.info("waiting for etcd at %s: %s", ",".join(self.config.etcd.endpoints), exc)
                time.sleep(0.5)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self._wedged.is_set():
                log.warning("test hook: HA loop wedged on purpose")
                stop.wait()
                return
            try:
                self.cycle()
                self._loop_alive()
            except EtcdError as exc:
                self._say(f"etcd unreachable ({exc}); holding still until it answers")
                # The loop is alive and holds still: systemd must not restart every
                # coordinator during an etcd outage (a restart would not bring etcd back).
                self._loop_alive()
            except Exception:  # noqa: BLE001 - the loop must survive a bug in one cycle
                log.exception("HA cycle failed")
            self._wake.wait(self.cycle_interval)
            self._wake.clear()

    def stop(self) -> None:
        """Clean shutdown: stop dispatching, resign, revoke the lease, stop serving."""
        self.notifier.stopping()
        with self._lock:
            if self.runtime is not None:
                self.runtime.stop("coordinator shutting down")
                self.runtime.keep_warm(False)
            if self.election is not None and self.election.is_leader:
                try:
                    self.election.resign()
                except EtcdError:
                    pass
            if self.watch is not None:
                self.watch.stop()
            if self.probe is not None:
                self.probe.stop()
            if self.session is not None:
                self.session.close()
            if self.grpc_server is not None:
                self.grpc_server.stop(1.0)
            serving.stop_web(self.web_proc)
            if self.etcd is not None:
                self.etcd.close()

    # -- one HA cycle ------------------------------------------------------
    def cycle(self) -> ha.Decision:
        with self._lock:
            snap = None
            try:
                if self.session is None or self.session.lost.is_set():
                    self._new_session()
                self.session.heartbeat()
                self._ensure_registered()
                self._campaign_at_once()
                snap = read_snapshot(self.etcd, self.keys)
                self.watch.saw(ha.SwitchoverSeen(snap.switchover, snap.switchover_revision, snap.revision))
                lead = self.leadership
                if lead.records_due:
                    lead.records_due = False
                    lead.take_up(ha.takeover(snap, self._me(snap)))
                me = self._me(snap)
                decision = ha.decide(snap, me)
                self._act(decision, snap)
                self.probe.watch(ha.probe_target(snap, me))
                self.runtime.keep_warm(decision.keep_warm)
                self.runtime.announce_successor(decision.successor)
                lead.saw_leader(snap.leader)
                self._say(decision.sentence)
                return decision
            finally:
                # Also when etcd did not answer: the UI and /metrics must see that we stopped acting.
                self._write_state(snap)

    def _me(self, snap: ha.Snapshot) -> ha.Me:
        """What we know of ourselves for this snapshot (keeps the clock of our primary's readiness)."""
        me = ha.Me(name=self.config.name, role=self.config.role, primary=self.config.primary,
                   acting=self.runtime is not None and self.runtime.started,
                   epoch=self.election.epoch if self.election is not None else None,
                   now=self.wall(), failback_delay=ha.failback_delay(snap.settings, self.timings.failback_delay),
                   contact_interval=ha.contact_interval(snap.settings),
                   previous_leader=self.leadership.previous_leader if self.leadership else None,
                   probe=self.probe.result() if self.probe else None,
                   revoked=self.leadership.revoked_why() if self.leadership else None)
        now = self.clock()
        self._primary_ready_since = ha.primary_ready_since(snap, me, self._primary_ready_since, now)
        ready_for = None if self._primary_ready_since is None else now - self._primary_ready_since
        return dataclasses.replace(me, primary_ready_for=ready_for)

    def _campaign_at_once(self) -> None:
        """The next leader of a planned handover campaigns as soon as the watch saw
        the leader key deleted (ha.campaign_at_once says who and with which guard)."""
        if not self.watch.leader_deleted():
            return
        me = ha.Me(name=self.config.name, role=self.config.role, primary=self.config.primary,
                   epoch=self.election.epoch, acting=self.runtime.started)
        guard = ha.campaign_at_once(self.watch.seen, me, ready=self._ready,
                                    session_lost=self.session.lost.is_set())
        if guard is not None:
            self.leadership.campaign_at_once(guard)

    def _act(self, d: ha.Decision, snap: ha.Snapshot) -> None:
        lead = self.leadership
        if d.action == ha.CAMPAIGN:
            lead.campaign(d.takeover)
        elif d.action == ha.LEAD:
            lead.take_up(d.takeover)
        elif d.action == ha.STEP_DOWN:
            lead.step_down("the leader key is not ours any more")
        elif d.action in (ha.HANDBACK, ha.SWITCHOVER):
            lead.hand_over(d)
        elif d.action == ha.TOUCH_CONTACT:
            lead.touch_contact(d.target)
        elif d.action == ha.DESELECT:
            lead.deselect(d, snap)
        elif d.action == ha.REVOKE:
            lead.revoke(d)
            self._wake.set()   # the leader key is gone: decide again at once

    @property
    def election(self) -> Election | None:
        return self.leadership.election if self.leadership is not None else None

    # -- session and registration -------------------------------------------
    def _new_session(self) -> None:
        """A fresh lease; the old one is gone. Registration and campaigning use it.
        Raises EtcdUnavailable when etcd does not answer; the next cycle tries again."""
        if self.session is not None:
            self.leadership.step_down("the session lease was lost")
            self.session.close()
            self.session = None
        session = Session(self.etcd, ttl=self.timings.ttl, renew_deadline=self.timings.renew_deadline,
                          keepalive_interval=self.timings.keepalive_interval, on_lost=self._on_lease_lost,
                          clock=self.clock)
        session.start()
        self.session = session
        self.leadership.new_session(session)

    def _ensure_registered(self) -> None:
        self.presence.ensure_registered(self.session.lease_id, self._ready)

    def _on_lease_lost(self) -> None:
        # Runs on the session thread: stop acting now, before the lease can expire
        # on the server (rule 3), whatever the HA loop is doing.
        log.warning("lease lost: stopping dispatch")
        try:
            self._write_state(None)  # the UI turns view-only now, not after the loop's next cycle
        except OSError:
            pass
        if self.runtime is not None:
            self.runtime.stop("not leader: lease lost")
        self._wake.set()

    def _on_not_leader(self) -> None:
        log.warning("a fenced write was refused: another coordinator leads; stopping dispatch")
        self._wake.set()

    # -- reporting ---------------------------------------------------------
    def _say(self, sentence: str) -> None:
        if sentence != self._last_sentence:
            log.info("%s", sentence)
            self.notifier.status(sentence)
            self._last_sentence = sentence

    def _loop_alive(self) -> None:
        """systemd's watchdog, fed by a cycle that ran to its end, as the session's
        heartbeat is: a wedged loop is restarted by systemd as well as losing its lease."""
        if self.notifier.watchdog_interval is not None:
            self.notifier.watchdog()

    def _write_state(self, snap: ha.Snapshot | None) -> None:
        session_ok = self.session is not None and not self.session.lost.is_set()
        lead = self.leadership
        self.presence.write_state(
            acting=bool(self.runtime is not None and self.runtime.started and session_ok),
            epoch=self.election.epoch if self.election is not None else None,
            leader=snap.leader.name if snap is not None and snap.leader else None, known=snap is not None,
            session=self.session, renew_deadline=self.timings.renew_deadline,
            takeovers=lead.takeovers if lead else 0, failovers=lead.failovers if lead else 0,
            handovers=lead.handovers if lead else 0,
            revocations=lead.revocations if lead else 0,
            stats=self.runtime.stats() if self.runtime is not None else {}, sentence=self._last_sentence)


def run_coordinator(config: CoordinatorConfig, state_dir: str,
                    start_ui: Callable[[CoordinatorConfig, str], Any] | None = None, test_hooks: bool = False) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    coordinator = Coordinator(config, state_dir, start_ui=start_ui, test_hooks=test_hooks)
    try:
        coordinator.start()
    except EtcdUnavailable as exc:
        log.error("cannot reach etcd at %s: %s", ",".join(config.etcd.endpoints), exc)
        coordinator.stop()
        return 2
    try:
        coordinator.run(stop)
    finally:
        coordinator.stop()
    return 0
