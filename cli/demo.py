"""`baton demo`: a failover, watched and timed.

Starts a local cluster (ttl 2 s, TLS on), runs a build, SIGKILLs the primary
mid-build, shows the backup taking over and the agents moving to it, brings
the primary back and shows the handback, then prints the timeline with the
measured times and checks that the build and every task in it ended done (the API's view; the
fault tests' history checker, bench/history_check.py, is what proves "exactly once").
"""
from __future__ import annotations

import json
import signal
import tempfile
import time

from cli.local import LocalCluster


def demo_build(tasks: int = 24, seconds: float = 1.0) -> dict:
    body = [{"id": "prepare", "cmd": "echo preparing"}]
    body += [{"id": f"compile-{i:02d}", "cmd": f"sleep {seconds}; echo compiled {i}", "deps": ["prepare"]}
             for i in range(tasks)]
    body.append({"id": "link", "cmd": "echo linked", "deps": [t["id"] for t in body[1:]]})
    return {"name": "demo", "tasks": body}


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.rows: list[tuple[float, str]] = []

    def mark(self, what: str) -> float:
        t = time.monotonic() - self.t0
        self.rows.append((t, what))
        print(f"  [{t:7.2f} s] {what}", flush=True)
        return t


def run_demo(args) -> int:
    directory = args.dir or tempfile.mkdtemp(prefix="baton-demo-")
    cluster = LocalCluster(directory, agents=args.agents, backups=1, cores=2, ttl=2, tls=True,
                           failback_delay=2.0, grace=3.0)
    timeline = Timeline()
    print(f"Baton demo in {directory} (ttl 2 s, TLS on)", flush=True)
    try:
        cluster.start()
        timeline.mark(f"cluster up: p1 leads, b1 selected, {args.agents} agents on p1")
        spec = demo_build()
        build_id = cluster.api("p1").request("POST", "/api/v1/builds", spec)["id"]
        timeline.mark(f"build {build_id} submitted ({len(spec['tasks'])} tasks)")

        def done_count(name: str) -> int:
            build = cluster.api(name).build(build_id)
            return sum(1 for t in build["tasks"] if t["state"] == "done")

        cluster._wait(lambda: done_count("p1") >= 4, 60, "a few tasks to finish")
        epoch_before = cluster.leader().epoch
        t_kill = timeline.mark("SIGKILL the primary p1 mid-build")
        cluster.coordinators["p1"].popen.send_signal(signal.SIGKILL)
        cluster.coordinators["p1"].popen.wait()
        cluster.wait_leader("b1", timeout=30)
        t_lead = timeline.mark(f"b1 leads (epoch {cluster.leader().epoch}, was {epoch_before})")
        cluster.wait_agents(args.agents, timeout=30, coordinator="b1")
        t_agents = timeline.mark(f"all {args.agents} agents connected to b1")
        before = done_count("b1")
        cluster._wait(lambda: done_count("b1") > before, 60, "a task to finish under b1")
        timeline.mark("b1 runs the build on")
        cluster.add_coordinator("p1", "primary")
        t_back = timeline.mark("p1 restarted")
        cluster.wait_leader("p1", timeout=60)
        t_handback = timeline.mark("b1 handed the baton back: p1 leads")
        cluster.wait_agents(args.agents, timeout=30, coordinator="p1")
        t_home = timeline.mark(f"all {args.agents} agents back on p1")
        cluster._wait(lambda: cluster.api("p1").build(build_id)["state"] in ("done", "failed"), 120,
                      "the build to end")
        build = cluster.api("p1").build(build_id)
        timeline.mark(f"build {build_id} {build['state']}")
        tasks = build["tasks"]
        ok = build["state"] == "done" and all(t["state"] == "done" for t in tasks)
        rerun = sum(1 for t in tasks if t.get("attempt", 1) > 1)
        print("\nMeasured:")
        print(f"  kill -> backup leads:          {t_lead - t_kill:5.2f} s  (ttl 2 s)")
        print(f"  kill -> agents on the backup:  {t_agents - t_kill:5.2f} s")
        print(f"  primary back -> handback:      {t_handback - t_back:5.2f} s  (failback_delay 2 s)")
        print(f"  primary back -> agents home:   {t_home - t_back:5.2f} s")
        done = sum(1 for t in tasks if t["state"] == "done")
        print(f"  tasks: {len(tasks)}, done: {done}, every task done: {ok}; re-run after the failover: {rerun}")
        print(json.dumps({"build": build_id, "state": build["state"]}))
        return 0 if ok else 1
    finally:
        cluster.stop()
