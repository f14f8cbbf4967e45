"""The coordinator daemon: the HA loop that decides who leads, and acts on it.

One loop per coordinator (primary or backup):

    read one snapshot (coordinator.snapshot) -> decide (coordinator.ha) -> act

Each cycle has one sentence, logged when it changes. The loop also ticks the
session's heartbeat, so the lease is renewed only while this loop is alive
(DESIGN.md section 3, rule 6): a wedged loop loses leadership like a dead
process. The session thread reports loss on its own after renew_deadline
and stops the runtime at once, whatever the loop is doing (rule 3).

The daemon owns the etcd Session and Election, the gRPC server the agents
talk to, the Runtime (the leader's work), and the web UI's gunicorn process.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

import grpc

from coordinator import ha
from coordinator.config import CoordinatorConfig
from cluster.daemon_state import write_state
from cluster.events import event_ops
from cluster.keys import Keys, decode, encode
from coordinator.runtime.aio_service import AioAgentServer
from coordinator.runtime.runtime import Runtime
from coordinator.snapshot import read_snapshot
from lease.client import connect
from lease.election import Election
from lease.errors import ConfigError, EtcdError, EtcdUnavailable, NotLeader
from lease.session import Session
from lease.watcher import Watcher

log = logging.getLogger("baton.coordinator")

VERSION = "0.1.0"


class Coordinator:
    """A primary or backup coordinator. `start()`, then `run(stop_event)`, then `stop()`."""

    def __init__(self, config: CoordinatorConfig, state_dir: str, *,
                 start_ui: Callable[[CoordinatorConfig, str], Any] | None = None, test_hooks: bool = False, startup_wait: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
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
        self.etcd = None
        self.session: Session | None = None
        self.election: Election | None = None
        self.runtime: Runtime | None = None
        self.grpc_server: AioAgentServer | None = None
        self.web_proc = None
        self._watchers: list[Watcher] = []
        self._last_sentence = ""
        self._primary_seen: tuple[int, float] | None = None  # (registration revision, first seen ready)
        self._last_other_leader: ha.Leader | None = None  # who led before us, to name the takeover
        self._ready = False
        self._leader_name: str | None = None
        self._registered: tuple[int, bool] | None = None  # (lease, ready) last written
        self.takeovers = 0   # times this coordinator began to lead
        self.failovers = 0   # of which as a backup standing in for its primary
        self.admin_password: str | None = None
        # Seen by our watches, for campaigning the moment a planned handover's
        # leader resigns (see _campaign_at_once).
        self._leader_deleted = False
        # (target or None, its mod revision or 0, the revision we saw it at); None: not seen yet
        self._switchover_seen: tuple[str | None, int, int] | None = None
        self._records_due = False   # won early: the takeover's records are written after the snapshot

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
        self._start_grpc()
        self._new_session()
        self._ensure_registered()
        for key, prefix in ((self.keys.leader, False), (self.keys.coordinators, True),
                            (self.keys.settings, False), (self.keys.switchover, False)):
            w = Watcher(self.etcd, key, prefix=prefix, on_events=self._on_watch, on_error=self._on_watch_error)
            w.start()
            self._watchers.append(w)
        if self._start_ui is not None:
            self._start_web()
        self._ready = True
        if self._test_hooks:
            signal.signal(signal.SIGUSR1, lambda *_: self._wedged.set())
        log.info("coordinator %s (%s) started: gRPC %s, web %s", self.config.name, self.config.role,
                 self.grpc_address, self.web_address)

    def _wait_for_etcd(self) -> None:
        """etcd may still be starting (compose, systemd): retry for startup_wait seconds,
        then give up with one sentence."""
        deadline = self.clock() + self.startup_wait
        while True:
            try:
                self.etcd.revision()
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
            except EtcdError as exc:
                self._say(f"etcd unreachable ({exc}); holding still until it answers")
            except Exception:  # noqa: BLE001 - the loop must survive a bug in one cycle
                log.exception("HA cycle failed")
            self._wake.wait(self.cycle_interval)
            self._wake.clear()

    def stop(self) -> None:
        """Clean shutdown: stop dispatching, resign, revoke the lease, stop serving."""
        with self._lock:
            if self.runtime is not None:
                self.runtime.stop("coordinator shutting down")
                self.runtime.keep_warm(False)
            if self.election is not None and self.election.is_leader:
                try:
                    self.election.resign()
                except EtcdError:
                    pass
            for w in self._watchers:
                w.stop()
            if self.session is not None:
                self.session.close()
            if self.grpc_server is not None:
                self.grpc_server.stop(1.0)
            self._stop_web()
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
                self._saw_switchover(snap.switchover, snap.switchover_revision, snap.revision)
                if self._records_due:
                    self._records_due = False
                    self._take_up(snap)
                me = self._me(snap)
                decision = ha.decide(snap, me)
                self._act(decision, snap)
                self.runtime.keep_warm(self._may_lead_next(snap))
                self.runtime.announce_successor(self._successor(snap))
                if snap.leader is not None and snap.leader.name != self.config.name:
                    self._last_other_leader = snap.leader
                self._say(decision.sentence)
                return decision
            finally:
                # Also when etcd did not answer: the UI and /metrics must see that we stopped acting.
                self._write_state(snap)

    def _me(self, snap: ha.Snapshot) -> ha.Me:
        acting = self.runtime is not None and self.runtime.started
        epoch = self.election.epoch if self.election is not None else None
        return ha.Me(name=self.config.name, role=self.config.role, primary=self.config.primary,
                     epoch=epoch, acting=acting, now=self.wall(),
                     primary_ready_for=self._primary_ready_for(snap),
                     failback_delay=self._failback_delay(snap.settings),
                     contact_interval=min(1.0, snap.settings.deselect_after / 10))

    def _successor(self, snap: ha.Snapshot) -> tuple[str, str] | None:
        """Who would lead after us: a switchover's target, else the selected
        backup (we are the primary) or our primary (we are a backup)."""
        me = self.config.name
        if snap.switchover and snap.switchover != me:
            target = snap.switchover
        elif self.config.role == "primary":
            target = snap.settings.selected_backup
        else:
            target = self.config.primary
        peer = snap.coordinators.get(target) if target else None
        return (target, peer.grpc) if peer is not None and peer.grpc else None

    def _may_lead_next(self, snap: ha.Snapshot) -> bool:
        """Keep a takeover's starting point warm (runtime/mirror.py) only where
        one can come: the primary, the selected backup, a switchover's target."""
        me = self.config.name
        return (self.config.role == "primary" or snap.settings.selected_backup == me
                or snap.switchover == me)

    def _failback_delay(self, settings) -> float:
        """The cluster setting when an admin saved one, else this backup's --failback-delay."""
        return self.timings.failback_delay if settings.failback_delay is None else settings.failback_delay

    def _primary_ready_for(self, snap: ha.Snapshot) -> float | None:
        """How long (by our own clock) our primary has been registered and ready."""
        if self.config.role != "backup":
            return None
        peer = snap.coordinators.get(self.config.primary)
        if peer is None or not peer.ready:
            self._primary_seen = None
            return None
        if self._primary_seen is None:
            self._primary_seen = (snap.revision, self.clock())
        return self.clock() - self._primary_seen[1]

    def _act(self, d: ha.Decision, snap: ha.Snapshot) -> None:
        if d.action == ha.CAMPAIGN:
            self._campaign(snap)
        elif d.action == ha.LEAD:
            self._take_up(snap)
        elif d.action == ha.STEP_DOWN:
            self._step_down("the leader key is not ours any more")
        elif d.action in (ha.HANDBACK, ha.SWITCHOVER):
            self._hand_over(d, snap)
        elif d.action == ha.TOUCH_CONTACT:
            self._fenced([self.etcd.ops.put(self.keys.contact(d.target), encode({"last_seen": self.wall()}))])
        elif d.action == ha.DESELECT:
            self._deselect(d, snap)

    # -- actions -----------------------------------------------------------
    def _campaign(self, snap: ha.Snapshot) -> None:
        if not self.election.campaign(self._leader_value()):
            return
        self.takeovers += 1
        self._take_up(snap, just_won=True)

    def _leader_value(self) -> bytes:
        return encode({"name": self.config.name, "role": self.config.role,
                       "grpc": self.grpc_address, "web": self.web_address})

    def _campaign_at_once(self) -> None:
        """A planned handover (switchover, handback): the next leader campaigns
        as soon as its watch sees the leader key deleted, without first reading
        a snapshot (five round trips under load, ~50 ms of the handover). It
        only does so where the HA rules (coordinator.ha) would say "campaign"
        whatever else the snapshot held: the target of the switchover request
        we saw, or the primary when we saw none. The campaign transaction
        compares the switchover key with what we saw, so a request changed
        meanwhile makes it fail and the normal cycle decides."""
        if not self._leader_deleted:
            return
        self._leader_deleted = False
        seen = self._switchover_seen
        if (seen is None or not self._ready or self.runtime.started or self.election.is_leader
                or self.session.lost.is_set()):
            return
        target, revision, _ = seen
        if target == self.config.name:
            guard = self.etcd.ops.mod(self.keys.switchover) == revision
        elif target is None and self.config.role == "primary":
            guard = self.etcd.ops.create(self.keys.switchover) == 0
        else:
            return
        if not self.election.campaign(self._leader_value(), also=[guard]):
            return
        self.takeovers += 1
        self._records_due = True
        try:
            self.runtime.start(self.election.epoch)  # serve now; the records follow this cycle's snapshot
        except EtcdError:
            pass  # _take_up starts it again (it raises there, and the cycle reports it)

    def _saw_switchover(self, target: str | None, mod_revision: int, at_revision: int) -> None:
        """Keep the newest of what the watch and the snapshots said of the switchover request."""
        seen = self._switchover_seen
        if seen is None or at_revision >= seen[2]:
            self._switchover_seen = (target, mod_revision, at_revision)

    def _take_up(self, snap: ha.Snapshot, just_won: bool = False) -> None:
        epoch = self.election.epoch
        previous = self._last_other_leader
        kind, detail = self._takeover_kind(snap, previous)
        self._last_other_leader = None
        if kind == "failover":
            self.failovers += 1
        ops = event_ops(self.etcd, self.keys, kind, self.config.name, epoch, detail, now=self.wall)
        if snap.switchover and snap.switchover != self.config.name:
            ops.append(self.etcd.ops.delete(self.keys.switchover))  # a stale request: the baton is here now
        try:
            # Serve first (agents are already dialling us); the records below are fenced by
            # the same epoch, so writing them a few milliseconds later changes nothing.
            self.runtime.start(epoch)
            self._fenced(ops)
            if self.config.role == "primary":
                from cluster.users import ensure_admin

                password = ensure_admin(self.etcd, self.keys, self.election.fence(),
                                        password=os.environ.get("BATON_ADMIN_PASSWORD"))
                if password is not None:
                    self.admin_password = password
                    if not os.environ.get("BATON_ADMIN_PASSWORD"):
                        log.warning("created user 'admin' with password %s (shown once)", password)
        except NotLeader:
            self._step_down("lost the leader key while taking up leadership")
            return
        log.info("%s: %s now leads (epoch %s)", kind, self.config.name, epoch)

    def _takeover_kind(self, snap: ha.Snapshot, previous: ha.Leader | None) -> tuple[str, str]:
        me = self.config.name
        if snap.switchover == me:
            return "switchover", f"{me} leads after a planned switchover"
        if self.config.role == "backup":
            return "failover", f"{me} took over: the primary {self.config.primary} is unavailable"
        if previous is not None and previous.role == "backup":
            return "handback", f"{me} leads again; {previous.name} handed back"
        return "leader", f"{me} leads"

    def _hand_over(self, d: ha.Decision, snap: ha.Snapshot) -> None:
        """Clean handover: stop dispatching, flush, record and resign (one fenced
        transaction, a round trip less), then say Goodbye to the agents."""
        reason = "handback" if d.action == ha.HANDBACK else "switchover"
        epoch = self.election.epoch

        def resign() -> None:
            self.election.resign(last_ops=event_ops(
                self.etcd, self.keys, reason if reason == "handback" else "resign", self.config.name,
                epoch, f"{self.config.name} hands the baton to {d.target} ({reason})", now=self.wall))

        self.runtime.stop(f"{reason} to {d.target}", successor=self._successor(snap), before_goodbye=resign)
        self._step_down(f"{reason} to {d.target}")

    def _deselect(self, d: ha.Decision, snap: ha.Snapshot) -> None:
        settings = snap.settings.updated({"selected_backup": None})
        ops = [self.etcd.ops.put(self.keys.settings, settings.to_json()),
               self.etcd.ops.delete(self.keys.contact(d.target))]
        ops += event_ops(self.etcd, self.keys, "deselection", self.config.name, self.election.epoch,
                         d.sentence, now=self.wall)
        # Compare the settings' revision too: an admin's concurrent Save All wins.
        self._fenced(ops, extra_compare=[self.etcd.ops.mod(self.keys.settings) == snap.settings_revision])
        log.warning("%s", d.sentence)

    def _step_down(self, reason: str) -> None:
        if self.runtime is not None:
            self.runtime.stop(f"not leader: {reason}")
        if self.session is not None:
            # A fresh Election holds no epoch: we no longer claim the leader key.
            self.election = Election(self.etcd, self.keys.leader, self.session)

    def _fenced(self, ops: list, extra_compare: list | None = None):
        return self.election.fence().commit(ops, also=extra_compare or ())

    # -- session and registration -------------------------------------------
    def _new_session(self) -> None:
        """A fresh lease; the old one is gone. Registration and campaigning use it.
        Raises EtcdUnavailable when etcd does not answer; the next cycle tries again."""
        if self.session is not None:
            self._step_down("the session lease was lost")
            self.session.close()
            self.session = None
        session = Session(self.etcd, ttl=self.timings.ttl, renew_deadline=self.timings.renew_deadline,
                          keepalive_interval=self.timings.keepalive_interval, on_lost=self._on_lease_lost,
                          clock=self.clock)
        session.start()
        self.session = session
        self.election = Election(self.etcd, self.keys.leader, session)

    def _ensure_registered(self) -> None:
        """coordinators/<name> under the current lease: how the others know we are here and ready.
        Written at once at start (ready false: the primary lists a new backup within a second),
        again when ready, and from the cycle, so a failed attempt is simply retried."""
        registration = (self.session.lease_id, self._ready)
        if self._registered != registration:
            value = {"name": self.config.name, "role": self.config.role, "primary": self.config.primary,
                     "grpc": self.grpc_address, "web": self.web_address, "version": VERSION,
                     "ready": self._ready, "host": socket.gethostname()}
            self.etcd.put(self.keys.coordinator(self.config.name), encode(value), lease=self.session.lease_id)
            self._registered = registration

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

    def _on_watch(self, events) -> None:
        for e in events:
            if e.key == self.keys.leader and e.type == "delete":
                self._leader_deleted = True
            elif e.key == self.keys.switchover:
                target = _switchover_target(e.value) if e.type == "put" else None
                self._saw_switchover(target, e.mod_revision if target else 0, e.mod_revision)
        self._wake.set()

    def _on_watch_error(self, exc: Exception) -> None:
        log.debug("watch error: %s", exc)
        self._wake.set()

    # -- serving -----------------------------------------------------------
    @property
    def grpc_address(self) -> str:
        return self._advertised(self.config.grpc)

    @property
    def web_address(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{self._advertised(self.config.web)}"

    def _advertised(self, hostport: str) -> str:
        host, _, port = hostport.rpartition(":")
        if self.config.advertise_host:
            host = self.config.advertise_host
        elif host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"{host}:{port}"

    def _start_grpc(self) -> None:
        """Serve the agents' streams on grpc.aio in its own thread: one event loop
        holds every stream (no thread per agent) at about half the CPU per task
        of the threaded server (bench/dispatch.py --transport)."""
        creds = None
        if self.config.tls_cert:
            with open(self.config.tls_key, "rb") as f:
                key = f.read()
            with open(self.config.tls_cert, "rb") as f:
                cert = f.read()
            creds = grpc.ssl_server_credentials([(key, cert)])
        self.grpc_server = AioAgentServer(self.runtime, self.config.grpc, creds)
        try:
            self.grpc_server.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on --grpc {self.config.grpc}: {exc}") from None

    def _start_web(self) -> None:
        self.web_proc = self._start_ui(self.config, self.state_path)

    def _stop_web(self) -> None:
        if self.web_proc is not None and self.web_proc.poll() is None:
            self.web_proc.terminate()
            try:
                self.web_proc.wait(10)
            except Exception:  # noqa: BLE001
                self.web_proc.kill()

    # -- reporting ---------------------------------------------------------
    def _say(self, sentence: str) -> None:
        if sentence != self._last_sentence:
            log.info("%s", sentence)
            self._last_sentence = sentence


    def _write_state(self, snap: ha.Snapshot | None) -> None:
        stats = self.runtime.stats() if self.runtime is not None else {}
        session_ok = self.session is not None and not self.session.lost.is_set()
        acting = bool(self.runtime is not None and self.runtime.started and session_ok)
        if snap is not None:  # else etcd did not answer this cycle: keep what we knew of the leader
            self._leader_name = snap.leader.name if snap.leader else None
        write_state(self.state_path, {
            "name": self.config.name, "role": self.config.role, "primary": self.config.primary,
            "acting": acting, "epoch": self.election.epoch if acting else None,
            "leader": self._leader_name,
            "lease_ttl_left": self.session.time_left() if self.session else 0.0,
            "lease_renewal_latency": self.session.last_renewal_latency if self.session else None,
            "renew_deadline": self.timings.renew_deadline,
            "takeovers": self.takeovers,
            "failovers": self.failovers,
            "agents_connected": stats.get("agents_connected", 0),
            "tasks_dispatched": stats.get("tasks_dispatched", 0),
            "sentence": self._last_sentence,
        })


def _switchover_target(raw: bytes | None) -> str | None:
    try:
        data = decode(raw)
    except ValueError:
        return None
    return data.get("target") if isinstance(data, dict) else None


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
