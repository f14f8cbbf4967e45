"""How many helper cores per second does the leader lend, and how quickly?

    python bench/grants.py [--agents 100] [--cores 8] [--initiators 100] [--max-want 4]
                           [--rate 2000] [--seconds 10] [--etcd URL] [--json]

Everything is real but the compilers: a single-member etcd (started here
unless --etcd is given), a Session + Election whose leader key names the
Runtime served here on AioAgentServer (what the daemon serves,
coordinator/runtime/lending.py behind it), and in child processes:

- `--agents` real agents (agent.core.Agent) of `--cores` cores in one
  bench.pool process (`--pretend-helper`: their presence names a Helper
  address, so the leader lends their cores; they take Lend/Unlend on their
  streams as every agent does);
- `--initiators` Cores.Want streams on one grpc.aio event loop, as `baton run`
  holds them: each in turn wants 1..`--max-want` cores (random), waits until
  the leader's CoreGrants hold them, then wants 0 and waits until they are
  given back. Demand stays below the farm's cores, so what is measured is the
  lending path, not a queue for cores. Two phases: wants arriving at
  `--rate` grants/s in all (Poisson), where the latency is read; then every
  initiator asking again as soon as it is answered, the most grants/s the
  leader gives (its latency there is the queue of 100 streams waiting on a
  saturated machine: latency = streams / rate).

Measured:
- grants/s: cores lent per second (each is a Lend to an agent and a slot in
  the build's CoreGrants), and wants answered per second;
- grant latency: an initiator's CoreRequest sent -> the CoreGrants holding
  all it asked for received; median and p99 (and the give-back's);
- baseline, in the same run: sequential fenced etcd puts of one key each
  (what granting would cost if every grant were written to etcd), and the
  ratio grants/s / puts/s.

Target (issue 14, Performance): >= 2,000 grants/s, p99 <= 10 ms (at the
offered rate). Exits 1 if missed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import percentile  # noqa: E402
from cluster.keys import Keys, encode  # noqa: E402
from cluster.protocol import compile_pb2 as cpb  # noqa: E402
from cluster.protocol import compile_pb2_grpc  # noqa: E402
from coordinator.config import Timings  # noqa: E402
from coordinator.runtime.aio_service import AioAgentServer  # noqa: E402
from coordinator.runtime.runtime import Runtime  # noqa: E402
from lease.client import connect  # noqa: E402
from lease.election import Election, Fence  # noqa: E402
from lease.session import Session  # noqa: E402
from tests.harness.etcd import start_single  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.wait import wait_until  # noqa: E402

TOKEN = "bench-token"
ROOT = Path(__file__).resolve().parent.parent


# -- the initiators (child process) ---------------------------------------------------------
async def _initiators(address: str, count: int, max_want: int, seconds: float, seed: int,
                      rates: list[float]) -> list[dict]:
    """One phase per rate (grants/s offered in all; 0: each initiator asks again at once)."""
    import asyncio

    import grpc

    rng = random.Random(seed)
    channel = grpc.aio.insecure_channel(address)
    stub = compile_pb2_grpc.CoresStub(channel)
    phases = [asyncio.Event() for _ in rates]
    figures = [{"granted": 0, "answered": 0, "grant_lat": [], "give_back_lat": []} for _ in rates]
    mean_want = (1 + max_want) / 2

    async def initiator(n: int) -> None:
        call = stub.Want(metadata=[("authorization", f"Bearer {TOKEN}")])
        held = [0]
        changed = asyncio.Event()

        async def read() -> None:
            async for reply in call:
                held[0] = sum(g.slots for g in reply.grants)
                changed.set()

        reader = asyncio.ensure_future(read())

        async def want(cores: int, done) -> float:
            changed.clear()
            sent = time.monotonic()
            await call.write(cpb.CoreRequest(build=f"run-{n}", cores=cores))
            while not done(held[0]):
                await changed.wait()
                changed.clear()
            return time.monotonic() - sent

        await want(0, lambda h: True)   # heard (the first answer carries no grants)
        for phase, rate, f in zip(phases, rates, figures):
            await phase.wait()
            deadline = time.monotonic() + seconds
            period = count * mean_want / rate if rate else 0.0   # s between this initiator's wants
            next_start = time.monotonic() + rng.uniform(0, period)
            while time.monotonic() < deadline:
                if period:   # Poisson arrivals; a late one starts at once
                    await asyncio.sleep(max(0.0, next_start - time.monotonic()))
                    next_start += rng.expovariate(1 / period)
                k = rng.randint(1, max_want)
                f["grant_lat"].append(await want(k, lambda h, k=k: h >= k))
                f["granted"] += k
                f["answered"] += 1
                f["give_back_lat"].append(await want(0, lambda h: h == 0))
        await call.done_writing()
        reader.cancel()

    tasks = [asyncio.ensure_future(initiator(n)) for n in range(count)]
    await asyncio.sleep(0.5)   # every stream opened and heard
    for phase, f in zip(phases, figures):
        cpu, began = time.process_time(), time.monotonic()
        phase.set()
        await asyncio.sleep(seconds)
        while any(not t.done() for t in tasks) and phase is phases[-1]:
            await asyncio.sleep(0.01)
        f["elapsed"], f["cpu"] = time.monotonic() - began, time.process_time() - cpu
    await asyncio.gather(*tasks)
    await channel.close()
    return figures


def initiators_main(args: tuple, out: multiprocessing.Queue) -> None:
    import asyncio

    out.put(asyncio.run(_initiators(*args)))


# -- the baseline --------------------------------------------------------------------------
def etcd_put_rate(etcd, keys: Keys, epoch: int, seconds: float = 2.0) -> float:
    """Sequential fenced one-put transactions per second (a write per grant)."""
    fence = Fence(etcd, keys.leader, epoch).compare()
    value = encode({"build": "run-0", "agent": "bench-agent-1", "slots": 1, "grant": uuid.uuid4().hex})
    n = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        ok, _ = etcd.txn([fence], [etcd.ops.put(f"{keys.root}raw-grants/{n % 100}", value)], [])
        assert ok
        n += 1
    rate = n / (time.monotonic() - start)
    etcd.delete_prefix(keys.root + "raw-grants/")
    return rate


def run(args) -> dict:
    member = None
    if args.etcd:
        url = args.etcd
    else:
        member = start_single(Path(tempfile.mkdtemp(prefix="baton-bench-")))
        url = member.client_url
    etcd = connect(url, timeout=5.0)
    keys = Keys("bench" + uuid.uuid4().hex[:8])
    port = free_port()
    address = f"127.0.0.1:{port}"
    session = Session(etcd, ttl=10, healthy=lambda: True).start()
    election = Election(etcd, keys.leader, session)
    assert election.campaign(encode({"name": "bench", "role": "primary", "grpc": address}))
    epoch = election.epoch
    baseline = etcd_put_rate(etcd, keys, epoch)

    runtime = Runtime(etcd, keys, "bench", Timings(ttl=10), agent_token=TOKEN,
                      on_not_leader=lambda: print("lost leadership!", file=sys.stderr))
    server = AioAgentServer(runtime, address)
    server.start()
    runtime.start(epoch)
    pool_log = open(Path(tempfile.mkdtemp(prefix="baton-bench-pool-")) / "pool.log", "w")
    pool = subprocess.Popen(
        [sys.executable, "-m", "bench.pool", "--etcd", url, "--cluster", keys.cluster, "--count", str(args.agents),
         "--cores", str(args.cores), "--agent-token", TOKEN, "--pretend-helper"],
        env=dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")),
        stdout=pool_log, stderr=subprocess.STDOUT)
    ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork()
    out = ctx.Queue()
    try:
        def ready() -> bool:
            agents = runtime._dispatcher.agents.values()
            return sum(1 for a in agents if a.stream is not None and a.present and a.info.get("helper")) \
                == args.agents
        wait_until(ready, 120, message="every pool agent connected and present with a helper address")
        cpu = time.process_time()
        rates = [args.rate, 0.0] if args.rate else [0.0]
        child = ctx.Process(target=initiators_main, args=((address, args.initiators, args.max_want, args.seconds,
                                                           args.seed, rates), out), daemon=True)
        child.start()
        phases = out.get(timeout=len(rates) * args.seconds + 120)
        child.join(10)
        coordinator_cpu = time.process_time() - cpu

        def lent() -> int:
            return sum(a.lent for a in runtime._dispatcher.agents.values())
        deadline = time.monotonic() + 10
        while lent() and time.monotonic() < deadline:   # the streams' ends are being handled
            time.sleep(0.05)
        lent_after = lent()
    finally:
        pool.terminate()
        try:
            pool.wait(30)
        except subprocess.TimeoutExpired:
            pool.kill()
        pool_log.close()
        runtime.stop("bench over")
        server.stop(None)
        election.resign()
        session.close()
        etcd.close()
        if member is not None:
            member.stop()
    granted = sum(f["granted"] for f in phases)
    report = {"agents": args.agents, "cores": args.cores, "initiators": args.initiators, "max_want": args.max_want,
              "coordinator_cpu_us_per_grant": round(coordinator_cpu / granted * 1e6),
              "baseline_etcd_puts_per_s": round(baseline), "lent_after": lent_after, "phases": []}
    for rate, f in zip(rates, phases):
        lat, back = f["grant_lat"], f["give_back_lat"]
        grants_per_s = f["granted"] / f["elapsed"]
        report["phases"].append({
            "offered_grants_per_s": rate or "as fast as answered",
            "elapsed_s": round(f["elapsed"], 2), "cores_granted": f["granted"],
            "grants_per_s": round(grants_per_s), "wants_answered_per_s": round(f["answered"] / f["elapsed"]),
            "grant_p50_ms": round(statistics.median(lat) * 1000, 2),
            "grant_p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "grant_max_ms": round(max(lat) * 1000, 2),
            "give_back_p50_ms": round(statistics.median(back) * 1000, 2),
            "give_back_p99_ms": round(percentile(back, 0.99) * 1000, 2),
            "initiators_cpu_s": round(f["cpu"], 2),
            "ratio_to_etcd_puts": round(grants_per_s / baseline, 2)})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--initiators", type=int, default=100)
    parser.add_argument("--max-want", type=int, default=4, help="cores an initiator wants at once, at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="grants/s offered in the first phase (Poisson arrivals; the latency target's load); "
                             "then a phase as fast as answered (the throughput). 0: that phase only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--etcd", default=None, help="use this etcd instead of starting one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.initiators * args.max_want > args.agents * args.cores:
        parser.error("--initiators x --max-want must not exceed the farm's cores (the bench measures lending, "
                     "not a queue for cores)")
    r = run(args)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['initiators']} initiators, each wanting 1..{r['max_want']} cores then none, on {r['agents']} "
              f"agents x {r['cores']} cores (coordinator {r['coordinator_cpu_us_per_grant']} us CPU per grant)")
        for p in r["phases"]:
            print(f"  offered {p['offered_grants_per_s']}: {p['grants_per_s']} grants/s (cores lent; "
                  f"{p['wants_answered_per_s']} wants answered/s, {p['elapsed_s']} s, {p['cores_granted']} cores); "
                  f"grant latency (want sent -> grants holding it received) p50 {p['grant_p50_ms']} ms, "
                  f"p99 {p['grant_p99_ms']} ms, max {p['grant_max_ms']} ms; give back p50 "
                  f"{p['give_back_p50_ms']} ms, p99 {p['give_back_p99_ms']} ms; "
                  f"x{p['ratio_to_etcd_puts']} of the baseline")
        print(f"baseline, same run: sequential fenced etcd puts {r['baseline_etcd_puts_per_s']}/s "
              f"(a grant written to etcd would cost one)")
    first = r["phases"][0]
    ok = (max(p["grants_per_s"] for p in r["phases"]) >= 2000 and first["grant_p99_ms"] <= 10
          and r["lent_after"] == 0)
    if not ok:
        print("target missed: want >= 2000 grants/s, p99 <= 10 ms at the offered rate, every core given back",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
