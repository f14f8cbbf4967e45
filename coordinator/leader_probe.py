"""Watch the leader's process from the coordinator that would lead next.

Most failures of a leader are not a lost machine but a dead process (the OOM
killer, a crash, a bad deploy). Its host's kernel then closes the process's
sockets at once: a TCP connection to it ends (FIN or RST) within
milliseconds, and a connect to its port is refused. The probe holds a plain
TCP connection to the leader's gRPC address (from the leader key; no TLS
handshake, nothing sent: the server may ask agents for client certificates)
and, when that connection ends, connects again at once:

- accepted: the process lives (the server closed an idle connection, or the
  process is paused or busy: the kernel still accepts on its listening
  socket); the probe holds the new connection and reports nothing;
- refused (ECONNREFUSED): the process is gone; reported as a sighting,
  which coordinator.ha turns into a REVOKE of the leader's lease;
- reset (a process being torn down resets the connects queued on its
  listening socket): tried again at once;
- anything else (a timeout, no route): the host or the network is silent;
  reported as broken but not refused, and the lease decides.

A connect that is refused before we ever held a connection to that leader
is no evidence (an advertised address that does not reach the leader from
here would otherwise look like a crash). The probe decides nothing: the HA
loop retargets it every cycle (ha.probe_target) and reads `result()`; a
sighting wakes the loop at once. docs/design.md section 1, "Crash detection".
"""
from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Callable

from cluster.records import LeaderRecord
from coordinator.ha import ProbeResult

log = logging.getLogger("baton.coordinator")


def split_address(address: str) -> tuple[str, int]:
    """host:port (also [v6]:port) as create_connection takes it. Raises ValueError."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class LeaderProbe:
    """`start()`, then `watch(leader)` every HA cycle and `result()`; `stop()`.
    on_sighting runs on the probe thread whenever the result changes."""

    def __init__(self, on_sighting: Callable[[], None], *, connect_timeout: float = 1.0, retry: float = 0.5):
        self.on_sighting = on_sighting
        self.connect_timeout = connect_timeout
        self.retry = retry
        self._lock = threading.Lock()
        self._target: tuple[int, int, str] | None = None   # (epoch, lease id, address)
        self._result: ProbeResult | None = None
        self._stopped = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="leader-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._poke()
        self._thread.join(self.connect_timeout + 1.0)

    def watch(self, leader: LeaderRecord | None) -> None:
        """Watch this leader from now on (None: nobody); the same one again changes nothing."""
        target = None if leader is None else (leader.epoch, leader.lease_id, leader.grpc)
        with self._lock:
            if target == self._target:
                return
            self._target, self._result = target, None
        self._poke()

    def result(self) -> ProbeResult | None:
        """What the probe saw of the leader it watches now (None: nothing to report)."""
        with self._lock:
            return self._result

    # -- the probe thread ------------------------------------------------------
    def _poke(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _wait(self, timeout: float | None, held: socket.socket | None = None) -> bool:
        """Until poked, timeout, or `held` is readable; True when `held` is readable."""
        readable, _, _ = select.select([self._wake_r] + ([held] if held else []), [], [], timeout)
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        return held is not None and held in readable

    def _report(self, target: tuple[int, int, str], refused: bool, detail: str) -> None:
        epoch, lease_id, address = target
        result = ProbeResult(epoch, lease_id, address, broken=True, refused=refused, detail=detail)
        with self._lock:
            if self._target != target or self._result == result:
                return
            self._result = result
        log.warning("the leader at %s (epoch %s): connection broke; %s", address, epoch, detail)
        self.on_sighting()

    def _run(self) -> None:
        held: socket.socket | None = None
        watching = None
        broken = False   # a connection we held to this target ended
        while not self._stopped:
            with self._lock:
                target = self._target
            if target != watching:
                if held is not None:
                    held.close()
                held, watching, broken = None, target, False
            if target is None:
                self._wait(None)
                continue
            if held is None:
                held, broken = self._connect(target, broken)
                continue
            if not self._wait(None, held):
                continue
            try:
                alive = bool(held.recv(65536))   # the server may send HTTP/2 or TLS bytes: ignored
            except OSError:
                alive = False
            if not alive:
                held.close()
                held, broken = None, True   # the loop connects again at once: the confirming connect

    def _connect(self, target: tuple[int, int, str], broken: bool) -> tuple[socket.socket | None, bool]:
        """One connect to the target: (the connection, broken); on failure waits before the next try."""
        address = target[2]
        try:
            sock = socket.create_connection(split_address(address), timeout=self.connect_timeout)
        except ConnectionRefusedError:
            if broken:
                self._report(target, True, f"connection refused at {address}")
                self._wait(None)   # gone for good: nothing more to see until the leader key changes
            else:
                self._wait(self.retry)
            return None, broken
        except (ConnectionResetError, ConnectionAbortedError):
            # A listening socket torn down with its process resets the connects in its
            # queue: no evidence either way, but worth another look at once, not in `retry`.
            self._wait(min(self.retry, 0.01) if broken else self.retry)
            return None, broken
        except (OSError, ValueError) as exc:
            if broken:
                self._report(target, False, f"connect to {address} failed ({exc or type(exc).__name__}); "
                                            f"the lease decides")
            self._wait(self.retry)
            return None, broken
        if broken:
            log.debug("the leader at %s closed our probe's connection but accepts a new one", address)
            with self._lock:
                if self._target == target:
                    self._result = None   # alive after all
        return sock, False
