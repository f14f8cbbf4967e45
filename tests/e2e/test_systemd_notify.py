"""A real coordinator process under a stand-in for systemd's notify socket.

systemd (Type=notify, WatchdogSec=) waits for READY=1 and restarts the
service when WATCHDOG=1 stops coming; the coordinator feeds the watchdog
from its HA loop, so a wedged loop (the --test-hooks SIGUSR1 hook) goes
silent and would be restarted (deploy/systemd/baton-coordinator@.service).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.ports import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
QUIET = 3.0  # seconds without WATCHDOG=1 that count as "stopped" (six HA cycles at ttl 2)


def receive(sock: socket.socket, timeout: float) -> str | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode()
    except socket.timeout:
        return None


def wait_for(sock: socket.socket, predicate, deadline: float, seen: list[str]) -> str:
    while time.monotonic() < deadline:
        message = receive(sock, max(0.1, deadline - time.monotonic()))
        if message is not None:
            seen.append(message)
            if predicate(message):
                return message
    raise AssertionError(f"no such message before the deadline; got {seen[-10:]}")


def test_ready_then_watchdog_from_the_loop_which_stops_when_the_loop_wedges(tmp_path, etcd_url):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="30000000", PYTHONPATH=str(ROOT))
    env.pop("WATCHDOG_PID", None)
    argv = [sys.executable, "-m", "cli", "coordinator", "--name", "p1", "--role", "primary",
            "--etcd", etcd_url, "--cluster", f"n{os.getpid()}", "--ttl", "2", "--no-web", "--test-hooks",
            "--grpc", f"127.0.0.1:{free_port()}", "--web", "127.0.0.1:1", "--state-dir", str(tmp_path / "state")]
    log = open(tmp_path / "p1.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    seen: list[str] = []
    try:
        ready = wait_for(sock, lambda m: m.startswith("READY=1"), time.monotonic() + 60, seen)
        assert "STATUS=p1 (primary) started" in ready
        wait_for(sock, lambda m: "STATUS=" in m and "leader" in m, time.monotonic() + 30, seen)
        for _ in range(3):
            wait_for(sock, lambda m: m == "WATCHDOG=1", time.monotonic() + QUIET, seen)

        proc.send_signal(signal.SIGUSR1)  # the test hook: the HA loop stops cycling
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = receive(sock, QUIET)
            if message is None:
                break  # silent for QUIET seconds: systemd's watchdog would fire
            seen.append(message)
        else:
            raise AssertionError(f"WATCHDOG=1 kept coming after the loop wedged: {seen[-5:]}")
        assert proc.poll() is None
        assert b"HA loop wedged on purpose" in (tmp_path / "p1.log").read_bytes()

        proc.send_signal(signal.SIGTERM)
        wait_for(sock, lambda m: m == "STOPPING=1", time.monotonic() + 30, seen)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        sock.close()
