"""How fast does leadership move when the holder dies?

    python bench/lease_failover.py [--rounds 20] [--ttl 2] [--etcd URL] [--json]

Each round starts a lease holder process (tests/lease_holder.py) that wins
the election, SIGKILLs it, and measures from the kill:

  (a) until an observer (Election.observe in this process) sees the leader
      key deleted, i.e. the lease expired on the server;
  (b) until a waiting campaigner in this process (watching the leader key and
      campaigning on its deletion) holds leadership.

Prints median and p99 of each, with the ratio to the ttl. Target (issue
"Foundation"): median <= ttl + 0.6 s, p99 <= ttl + 0.8 s. Starts its own
single-member etcd (tests.harness.etcd.start_single) unless --etcd is given.
Exits 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lease.client import connect  # noqa: E402
from lease.election import Election  # noqa: E402
from lease.session import Session  # noqa: E402
from tests.harness.etcd import start_single  # noqa: E402
from tests.harness.wait import wait_until  # noqa: E402
from tests.lease_holder import Holder  # noqa: E402


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (with 20 samples: the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(0.99 * len(ordered) + 0.5)) - 1))]


def one_round(urls: str, etcd, key: str, ttl: int, campaigner: Election) -> tuple[float, float]:
    holder = Holder(urls, key, ttl=ttl)
    observer = None
    stop = threading.Event()
    try:
        holder.wait_for("leader", timeout=30)
        vacancies: list[float] = []
        observer = Election(etcd, key, None).observe(
            lambda info: info is None and vacancies.append(time.monotonic()))

        attempts = [0]
        campaign = campaigner.campaign

        def counted(value):
            attempts[0] += 1
            return campaign(value)

        campaigner.campaign = counted  # type: ignore[method-assign]
        won: list[float] = []
        t = threading.Thread(target=lambda: campaigner.wait_for_vacancy_and_campaign("bench", stop, poll=5.0)
                             and won.append(time.monotonic()), daemon=True)
        t.start()
        # The campaigner is watching once it has tried and lost once.
        wait_until(lambda: attempts[0] >= 1, timeout=10, message="campaigner waiting")
        # Kill at a random point of the holder's renewal cycle, not in phase with it.
        time.sleep(random.uniform(0, ttl))
        vacancies.clear()

        killed = time.monotonic()
        holder.signal(signal.SIGKILL)
        wait_until(lambda: vacancies and won, timeout=ttl + 15, message="vacancy seen and successor won")
        t.join(5)
        return vacancies[0] - killed, won[0] - killed
    finally:
        stop.set()
        campaigner.__dict__.pop("campaign", None)
        if observer is not None:
            observer.stop()
        holder.stop()
        campaigner.resign()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--ttl", type=int, default=2)
    p.add_argument("--etcd", default=None, help="etcd URL(s); default: start a private single member")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    member = None
    tmp = None
    if args.etcd is None:
        tmp = tempfile.TemporaryDirectory(prefix="baton-bench-")
        member = start_single(Path(tmp.name))
        urls = member.client_url
    else:
        urls = args.etcd
    etcd = connect(urls, timeout=2.0)
    key = f"/baton/bench-{uuid.uuid4().hex[:8]}/leader"
    session = Session(etcd, ttl=args.ttl, healthy=lambda: True).start()
    campaigner = Election(etcd, key, session)
    deleted, taken = [], []
    try:
        for i in range(args.rounds):
            a, b = one_round(urls, etcd, key, args.ttl, campaigner)
            deleted.append(a)
            taken.append(b)
            if not args.json:
                print(f"round {i + 1:2d}: key deleted after {a:.3f} s, successor leads after {b:.3f} s",
                      flush=True)
    finally:
        session.close()
        etcd.close()
        if member is not None:
            member.stop()
        if tmp is not None:
            tmp.cleanup()

    ttl = args.ttl
    result = {"ttl": ttl, "rounds": args.rounds}
    ok = True
    for name, values in (("kill_to_key_deleted", deleted), ("kill_to_successor_leads", taken)):
        med, top = statistics.median(values), p99(values)
        ok &= med <= ttl + 0.6 and top <= ttl + 0.8
        result[name] = {"median": round(med, 3), "p99": round(top, 3),
                        "median_ttl_ratio": round(med / ttl, 3), "p99_ttl_ratio": round(top / ttl, 3)}
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("kill_to_key_deleted", "kill_to_successor_leads"):
            r = result[name]
            print(f"{name:24s} median {r['median']:.3f} s ({r['median_ttl_ratio']:.2f} x ttl)  "
                  f"p99 {r['p99']:.3f} s ({r['p99_ttl_ratio']:.2f} x ttl)")
        print(f"target: median <= {ttl + 0.6:.1f} s, p99 <= {ttl + 0.8:.1f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
