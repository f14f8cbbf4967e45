"""A lease holder in its own process, for fault tests and benchmarks.

    python -m tests.lease_holder --etcd URLS --key KEY [--ttl 2] [--fence-key K]

Starts a Session, campaigns for KEY (watching it, so it campaigns again the
moment the key is deleted), then heartbeats its session. With --fence-key it
also makes a fenced write every --write-every seconds and keeps trying after
the session is lost, to show that fencing, not the holder's own view, stops
an old leader. Reports on stdout as JSON lines, each with "event" and a wall
clock "t" (time.time(), comparable across processes on one machine):

    {"event": "session", "lease": ID}           lease granted
    {"event": "leader", "epoch": N}             we lead
    {"event": "fenced", "ok": true|false, ...}  first write, and every change of outcome
    {"event": "lost", "reason": "..."}          the session reported loss
    {"event": "error", "message": "..."}        could not start (exit 2)

Exits 3 after loss (once a fenced write was rejected, with --fence-key).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from lease.client import connect
from lease.election import Election
from lease.errors import BatonError, EtcdError, LeaseLost, NotLeader
from lease.session import Session


_say_lock = threading.Lock()


def say(event: str, **fields: object) -> None:
    """One JSON line per event. The session thread (on_lost) and the main thread both
    report, so each line is written whole under a lock: print() writes the text and the
    newline separately, and two threads' lines could otherwise run together."""
    line = json.dumps({"event": event, "t": time.time(), **fields}) + "\n"
    with _say_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--etcd", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--value", default="holder")
    p.add_argument("--ttl", type=int, default=2)
    p.add_argument("--renew-deadline", type=float, default=None)
    p.add_argument("--keepalive", type=float, default=None)
    p.add_argument("--ca", default=None)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--fence-key", default=None)
    p.add_argument("--write-every", type=float, default=0.1)
    args = p.parse_args(argv)

    lost = threading.Event()
    try:
        etcd = connect(args.etcd, timeout=args.timeout, ca_cert=args.ca)
        session = Session(etcd, ttl=args.ttl, renew_deadline=args.renew_deadline,
                          keepalive_interval=args.keepalive,
                          on_lost=lambda: (say("lost", reason=session.lost_reason), lost.set())).start()
    except BatonError as exc:
        say("error", message=str(exc))
        return 2
    say("session", lease=session.lease_id)
    election = Election(etcd, args.key, session)

    # Heartbeat from its own thread while campaigning: the "owner loop" here
    # is this process being alive and scheduled.
    stop_beat = threading.Event()

    def beat() -> None:
        while not stop_beat.wait(min(0.1, session.renew_deadline / 4)):
            session.heartbeat()

    threading.Thread(target=beat, daemon=True).start()
    try:
        if not election.wait_for_vacancy_and_campaign(args.value, lost, poll=1.0):
            return 3
    except LeaseLost:
        return 3  # already reported by on_lost
    except BatonError as exc:
        say("error", message=str(exc))
        return 3
    # The fence of the epoch we won with is used for every write, not
    # election.epoch: the point is that an old leader's writes bounce
    # whatever it believes.
    fence = election.fence()
    say("leader", epoch=fence.epoch, lease=session.lease_id)

    last_ok: bool | None = None
    counter = 0
    while True:
        if args.fence_key:
            counter += 1
            fields: dict = {}
            try:
                fence.commit([etcd.ops.put(args.fence_key, str(counter))])
                ok = True
            except NotLeader as exc:
                ok, fields = False, {"error": str(exc)}
            except EtcdError as exc:
                ok, fields = None, {"error": str(exc)}
            if ok is not None and ok != last_ok:
                say("fenced", ok=ok, n=counter, **fields)
                last_ok = ok
            if lost.is_set() and ok is False:
                return 3
        elif lost.is_set():
            return 3
        time.sleep(args.write_every)


class Holder:
    """Runs this script as a subprocess and reads its reports with deadlines.

    Used by the fault tests and bench/lease_failover.py. `stop()` kills it
    (SIGCONT first, in case it was paused); it is also a context manager.
    """

    def __init__(self, etcd_urls: str, key: str, *extra: str, ttl: int = 2):
        import os
        import queue
        import subprocess
        from pathlib import Path

        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        import tempfile

        # stderr to a file: a pipe nobody reads could fill and stall the holder.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lease_holder", "--etcd", etcd_urls, "--key", key,
             "--ttl", str(ttl), *extra],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=root, env=env)
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self._queue.put(json.loads(line))
            except ValueError:
                self._queue.put({"event": "garbage", "line": line})
        self._queue.put({"event": "exit"})

    def wait_for(self, event: str, timeout: float) -> dict:
        """The next report named `event` (earlier ones are kept in .events).
        Raises AssertionError with what was seen if it does not come in time."""
        import queue

        for seen in self.events:
            if seen["event"] == event and not seen.get("_taken"):
                seen["_taken"] = True
                return seen
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                report = self._queue.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"holder did not report {event!r} within {timeout} s; "
                                     f"saw {self.events}; stderr: {self.stderr_tail()}") from None
            self.events.append(report)
            if report["event"] == event:
                report["_taken"] = True
                return report
            if report["event"] == "exit" and event != "exit":
                raise AssertionError(f"holder exited ({self.proc.wait()}) before reporting {event!r}; "
                                     f"saw {self.events}; stderr: {self.stderr_tail()}")

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        import signal as signals

        if self.proc.poll() is None:
            self.proc.send_signal(signals.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
