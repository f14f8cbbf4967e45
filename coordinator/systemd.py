"""systemd's notify protocol (sd_notify), without libsystemd.

A unit with `Type=notify` waits for READY=1 before it counts the service as
started, and with `WatchdogSec=` restarts it when WATCHDOG=1 stops coming.
The daemon sends READY=1 once it serves, and WATCHDOG=1 from its HA loop only
while that loop is healthy: the same heartbeat that lets the Session renew the
lease, so a wedged loop is restarted by systemd as well as losing leadership.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op. A failed send is
logged once and never raised: systemd's bookkeeping must not stop the daemon.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET (a path, or '@name' in the abstract namespace)."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]
        usec = env.get("WATCHDOG_USEC", "")
        # systemd sets WATCHDOG_PID to the process it watches; another process ignores it.
        pid_ok = env.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and pid_ok else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """True if systemd was told; False outside systemd or when the send failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, sentence: str) -> bool:
        return self.send(f"STATUS={sentence}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
