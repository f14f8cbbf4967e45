"""coordinator.systemd: the sd_notify datagrams a Type=notify unit waits for, on a real socket."""
import os
import socket

from coordinator.systemd import Notifier


def _listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_ready_watchdog_and_status_reach_the_notify_socket(tmp_path):
    sock, path = _listener(tmp_path)
    with sock:
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
        assert notifier.enabled and notifier.watchdog_interval == 3.0
        assert notifier.ready("leading")
        assert sock.recv(256) == b"READY=1\nSTATUS=leading"
        assert notifier.watchdog()
        assert sock.recv(256) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert sock.recv(256) == b"STOPPING=1"


def test_abstract_socket_names(tmp_path):
    name = f"baton-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(64) == b"READY=1"


def test_outside_systemd_nothing_is_sent_and_nothing_fails(tmp_path, caplog):
    assert not Notifier({}).enabled and not Notifier({}).ready()
    assert Notifier({}).watchdog_interval is None
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not gone.watchdog() and not gone.watchdog()
    assert caplog.text.count("cannot notify systemd") == 1


def test_a_watchdog_meant_for_another_process_is_ignored():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
