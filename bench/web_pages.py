"""Web page latency with a big farm: 1,000 agents and 100 builds in a real etcd.

    python bench/web_pages.py [--agents 1000] [--builds 100] [--tasks 200] [--requests 200]
                              [--etcd URL]  (default: starts its own single-member etcd)

Measures the overview page, the agents page, the builds page and
GET /api/v1/status through the Flask test client with a logged-in session
(so every request does what a browser's does: session check, user lookup,
cluster snapshot, rendering). Prints p50/p95/max per route; the target is
p95 <= 50 ms. Exits 1 when a route misses it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import users  # noqa: E402
from cluster.daemon_state import write_state  # noqa: E402
from cluster.keys import Keys, encode  # noqa: E402
from lease.client import connect  # noqa: E402
from lease.election import Fence  # noqa: E402
from web import create_app  # noqa: E402

TARGET_P95_MS = 50.0
ROUTES = ("/", "/agents", "/builds", "/api/v1/status")


def seed(etcd, keys: Keys, n_agents: int, n_builds: int, n_tasks: int) -> int:
    """Leader key, coordinators, settings, agents (+ runtime view), builds with task records."""
    lease = etcd.lease_grant(300)
    ok, _ = etcd.txn([etcd.ops.create(keys.leader) == 0], [etcd.ops.put(keys.leader, encode(
        {"name": "p1", "role": "primary", "grpc": "h:1", "web": "http://h:8000"}), lease=lease)])
    assert ok, "leader key exists already"
    epoch = etcd.get(keys.leader)[1].create_revision
    users.add_user(etcd, keys, "admin", "admin", "bench-password", Fence(etcd, keys.leader, epoch))
    for name, role in (("p1", "primary"), ("b1", "backup"), ("b2", "backup")):
        etcd.put(keys.coordinator(name), encode({"name": name, "role": role, "primary": "p1", "web": f"http://{name}:8000"}),
                 lease=lease)
    etcd.put(keys.settings, encode({"selected_backup": "b1"}))
    ops, runtime = [], {}
    for i in range(n_agents):
        name = f"agent-{i:04d}"
        ops.append(etcd.ops.put(keys.agent(name), encode({"name": name, "host": f"host{i}", "cores": 16,
                                                          "group": "linux", "coordinator": "p1", "epoch": epoch})))
        runtime[name] = {"connected": True, "running": i % 17, "cores": 16, "builds": [f"b-{i % n_builds:04d}"]}
        if i % 50 == 0:
            ops.append(etcd.ops.put(keys.agent_settings(name), encode({"disabled": True})))
    for i in range(n_builds):
        build_id = f"b-{i:04d}"
        tasks = [{"id": f"t{j}", "cmd": f"make part{j}", "deps": [], "timeout": None} for j in range(n_tasks)]
        ops.append(etcd.ops.put(keys.build(build_id), encode({"id": build_id, "name": f"build {i}",
                                                              "submitted": time.time() - i, "user": "admin",
                                                              "tasks": tasks})))
        # build-status as the leader writes it (no name: the web reads the spec once and caches it)
        ops.append(etcd.ops.put(keys.status_of_build(build_id), encode(
            {"state": "running", "total": n_tasks, "done": n_tasks // 2, "failed": 1, "running": 10,
             "started": time.time() - 100, "finished": None})))
        for j in range(0, n_tasks // 2):
            ops.append(etcd.ops.put(keys.task(build_id, f"t{j}"), encode(
                {"state": "done", "attempt": 1, "agent": f"agent-{j:04d}",
                 "result": {"exit_code": 0, "duration": 3.2, "output_tail": "ok\n" * 5, "agent": f"agent-{j:04d}"}})))
    ops.append(etcd.ops.put(keys.runtime, encode({"coordinator": "p1", "epoch": epoch, "time": time.time(),
                                                  "agents": runtime})))
    for i in range(0, len(ops), 100):  # etcd's default max txn ops is 128
        ok, _ = etcd.txn([], ops[i:i + 100])
    for i in range(200):
        etcd.put(keys.event(f"{i:020d}-p1"), encode({"type": "leader", "time": time.time() - 1000 + i,
                                                     "coordinator": "p1", "epoch": epoch, "detail": f"event {i}"}))
    return epoch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_gunicorn(url: str, keys: Keys, state: str, requests: int) -> float:
    """The same routes over HTTP (keep-alive, Basic auth) against gunicorn; returns the worst p95."""
    import base64
    import http.client
    import subprocess

    from tests.harness.ports import free_port
    from tests.harness.wait import wait_until
    from web.serve import gunicorn_argv

    port = free_port()
    env = dict(os.environ, BATON_ETCD=url, BATON_CLUSTER=keys.cluster, BATON_NAME="p1", BATON_ROLE="primary",
               BATON_DAEMON_STATE=state, BATON_RENEW_DEADLINE="3600", SECRET_KEY="bench-secret-key-0123456789abcdef",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(gunicorn_argv(f"127.0.0.1:{port}"), env=env)
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:bench-password").decode()}
    worst = 0.0
    try:
        def up() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/status", headers=auth)
            return conn.getresponse().status == 200

        wait_until(up, 30, interval=0.2, message="gunicorn up")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        print("over HTTP (gunicorn, 2 workers):")
        for route in ROUTES:
            times = []
            for i in range(requests + 10):
                start = time.perf_counter()
                conn.request("GET", route, headers=auth)
                response = conn.getresponse()
                response.read()
                if i >= 10:  # both workers warm (etcd client, caches)
                    times.append((time.perf_counter() - start) * 1000)
                assert response.status == 200, (route, response.status)
            p95 = percentile(times, 0.95)
            worst = max(worst, p95)
            print(f"{route:<18}{statistics.median(times):>9.1f}{p95:>9.1f}{max(times):>9.1f}")
    finally:
        proc.terminate()
        proc.wait(15)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--builds", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=200, help="tasks per build")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per route")
    parser.add_argument("--etcd", help="etcd URL (default: start a private etcd)")
    parser.add_argument("--gunicorn", action="store_true",
                        help="also measure over HTTP against real gunicorn (2 gthread-based workers)")
    args = parser.parse_args(argv)

    member = None
    tmp = Path(tempfile.mkdtemp(prefix="baton-bench-web-"))
    url = args.etcd
    if not url:
        from tests.harness.etcd import start_single
        member = start_single(tmp)
        url = member.client_url
    etcd = connect(url, timeout=10)
    keys = Keys("bench" + os.urandom(3).hex())
    try:
        t0 = time.perf_counter()
        epoch = seed(etcd, keys, args.agents, args.builds, args.tasks)
        print(f"seeded {args.agents} agents, {args.builds} builds x {args.tasks} tasks "
              f"in {time.perf_counter() - t0:.1f} s")
        state = str(tmp / "p1.json")
        write_state(state, {"name": "p1", "role": "primary", "acting": True, "epoch": epoch, "lease_ttl_left": 9})
        app = create_app({"BATON_ETCD": url, "BATON_CLUSTER": keys.cluster, "BATON_NAME": "p1",
                          "BATON_DAEMON_STATE": state, "BATON_RENEW_DEADLINE": 3600,
                          "SECRET_KEY": "bench-secret-key-0123456789abcdef"})
        client = app.test_client()
        import re
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        assert client.post("/login", data={"username": "admin", "password": "bench-password",
                                           "csrf_token": token}).status_code == 302
        worst = 0.0
        print(f"{'route':<18}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'KiB':>8}")
        for route in ROUTES:
            first = time.perf_counter()
            response = client.get(route)
            assert response.status_code == 200, (route, response.status_code)
            cold = (time.perf_counter() - first) * 1000
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                response = client.get(route)
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200
            p95 = percentile(times, 0.95)
            worst = max(worst, p95)
            print(f"{route:<18}{statistics.median(times):>9.1f}{p95:>9.1f}{max(times):>9.1f}"
                  f"{len(response.data) / 1024:>8.0f}   (first request {cold:.0f} ms)")
        if args.gunicorn:
            worst = max(worst, measure_gunicorn(url, keys, state, args.requests))
        verdict = "OK" if worst <= TARGET_P95_MS else "MISSED"
        print(f"worst p95 {worst:.1f} ms, target <= {TARGET_P95_MS:.0f} ms: {verdict}")
        return 0 if worst <= TARGET_P95_MS else 1
    finally:
        etcd.delete_prefix(keys.root)
        etcd.close()
        if member is not None:
            member.stop()


if __name__ == "__main__":
    sys.exit(main())
