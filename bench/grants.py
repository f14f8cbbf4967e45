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
- baselines, in the same run: sequential fenced etcd puts of one key each
  (what granting would cost if every grant were written to etcd), and the
  ratio grants/s / puts/s; and before each phase, the same initiators
  sending the same messages at the same rate to an echo stream served in
  the leader's process (EchoServer: gRPC and this machine without the
  leader), with the ratios of the rates and of the p99s.

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

from bench.dispatch import bench_etcd, percentile  # noqa: E402
from cluster.keys import Keys, encode  # noqa: E402
from cluster.protocol import compile_pb2 as cpb  # noqa: E402
from cluster.protocol import compile_pb2_grpc  # noqa: E402
from coordinator.config import Timings  # noqa: E402
from coordinator.runtime.aio_service import AioAgentServer  # noqa: E402
from coordinator.runtime.runtime import Runtime  # noqa: E402
from lease.client import connect  # noqa: E402
from lease.election import Election, Fence  # noqa: E402
from lease.session import Session  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.wait import wait_until  # noqa: E402

TOKEN = "bench-token"
ROOT = Path(__file__).resolve().parent.parent


# -- the initiators (child process) ---------------------------------------------------------
async def _initiators(address: str, echo: str, count: int, max_want: int, seconds: float, seed: int,
                      phases: list[tuple[str, float]]) -> list[dict]:
    """One run per phase (kind, rate): kind "grants" asks the leader, "echo" sends the same
    messages to the echo server instead; rate is grants/s offered in all (0: each initiator
    asks again as soon as it is answered)."""
    import asyncio

    import grpc

    rng = random.Random(seed)
    channel, echo_channel = grpc.aio.insecure_channel(address), grpc.aio.insecure_channel(echo)
    stub = compile_pb2_grpc.CoresStub(channel)
    echo_stream = echo_channel.stream_stream(ECHO_METHOD)
    started = [asyncio.Event() for _ in phases]
    figures = [{"granted": 0, "answered": 0, "grant_lat": [], "give_back_lat": []} for _ in phases]
    mean_want = (1 + max_want) / 2

    async def initiator(n: int) -> None:
        call = stub.Want(metadata=[("authorization", f"Bearer {TOKEN}")])
        pings = echo_stream()
        held, pongs = [0], [0]
        changed = asyncio.Event()

        async def read(source, take) -> None:
            async for reply in source:
                take(reply)
                changed.set()

        readers = [asyncio.ensure_future(read(call, lambda r: held.__setitem__(0, sum(g.slots for g in r.grants)))),
                   asyncio.ensure_future(read(pings, lambda r: pongs.__setitem__(0, pongs[0] + 1)))]

        async def ask(kind: str, cores: int, done) -> float:
            changed.clear()
            sent = time.monotonic()
            if kind == "echo":
                expected = pongs[0] + 1
                await pings.write(cpb.CoreRequest(build=f"run-{n}", cores=cores).SerializeToString())
                done = lambda _: pongs[0] >= expected   # noqa: E731
            else:
                await call.write(cpb.CoreRequest(build=f"run-{n}", cores=cores))
            while not done(held[0]):
                await changed.wait()
                changed.clear()
            return time.monotonic() - sent

        await ask("grants", 0, lambda h: True)   # heard (the first answer carries no grants)
        for go, (kind, rate), f in zip(started, phases, figures):
            await go.wait()
            deadline = time.monotonic() + seconds
            period = count * mean_want / rate if rate else 0.0   # s between this initiator's wants
            next_start = time.monotonic() + rng.uniform(0, period)
            while time.monotonic() < deadline:
                if period:   # Poisson arrivals; a late one starts at once
                    await asyncio.sleep(max(0.0, next_start - time.monotonic()))
                    next_start += rng.expovariate(1 / period)
                k = rng.randint(1, max_want)
                f["grant_lat"].append(await ask(kind, k, lambda h, k=k: h >= k))
                f["granted"] += k
                f["answered"] += 1
                f["give_back_lat"].append(await ask(kind, 0, lambda h: h == 0))
        await call.done_writing()
        await pings.done_writing()
        for reader in readers:
            reader.cancel()

    tasks = [asyncio.ensure_future(initiator(n)) for n in range(count)]
    await asyncio.sleep(0.5)   # every stream opened and heard
    for go, f in zip(started, figures):
        cpu, began = time.process_time(), time.monotonic()
        go.set()
        await asyncio.sleep(seconds)
        while any(not t.done() for t in tasks) and go is started[-1]:
            await asyncio.sleep(0.01)
        f["elapsed"], f["cpu"] = time.monotonic() - began, time.process_time() - cpu
    await asyncio.gather(*tasks)
    await channel.close()
    await echo_channel.close()
    return figures


def initiators_main(args: tuple, out: multiprocessing.Queue) -> None:
    import asyncio

    out.put(asyncio.run(_initiators(*args)))


# -- the baselines ---------------------------------------------------------------------------
ECHO_METHOD = "/bench.Echo/Echo"


class EchoServer:
    """A grpc.aio bidi stream that sends every message back, on its own thread and event loop
    in the leader's process (as AioAgentServer): the same streams and message rate as the
    grants, without the leader; what gRPC and this machine cost alone."""

    def __init__(self):
        import asyncio
        import threading

        import grpc

        async def echo(requests, context):
            async for message in requests:
                yield message

        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        handler = grpc.method_handlers_generic_handler("bench.Echo",
                                                       {"Echo": grpc.stream_stream_rpc_method_handler(echo)})
        ready = threading.Event()

        async def serve():
            self.stopped = asyncio.Event()
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(f"127.0.0.1:{self.port}")
            await server.start()
            ready.set()
            await self.stopped.wait()
            await server.stop(None)

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        ready.wait(10)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopped.set)
        self.thread.join(10)


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
    member, url = bench_etcd(args.etcd)
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
    echo = EchoServer()
    pool_log = open(Path(tempfile.mkdtemp(prefix="baton-bench-pool-")) / "pool.log", "w")
    pool = subprocess.Popen(
        [sys.executable, "-m", "bench.pool", "--etcd", url, "--cluster", keys.cluster, "--count", str(args.agents),
         "--cores", str(args.cores), f"--agent-token={TOKEN}", "--pretend-helper"],
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
        kinds = [(kind, rate) for rate in ([args.rate, 0.0] if args.rate else [0.0]) for kind in ("echo", "grants")]
        child = ctx.Process(target=initiators_main, args=((address, echo.address, args.initiators, args.max_want,
                                                           args.seconds, args.seed, kinds), out), daemon=True)
        child.start()
        phases = out.get(timeout=len(kinds) * args.seconds + 120)
        child.join(10)

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
        echo.stop()
        election.resign()
        session.close()
        etcd.close()
        if member is not None:
            member.stop()
    report = {"agents": args.agents, "cores": args.cores, "initiators": args.initiators, "max_want": args.max_want,
              "baseline_etcd_puts_per_s": round(baseline), "lent_after": lent_after, "phases": []}
    for (kind, rate), f in zip(kinds, phases):
        lat, back = f["grant_lat"], f["give_back_lat"]
        grants_per_s = f["granted"] / f["elapsed"]
        report["phases"].append({
            "kind": kind, "offered_grants_per_s": rate or "as fast as answered",
            "elapsed_s": round(f["elapsed"], 2), "cores_granted": f["granted"],
            "grants_per_s": round(grants_per_s), "wants_answered_per_s": round(f["answered"] / f["elapsed"]),
            "grant_p50_ms": round(statistics.median(lat) * 1000, 2),
            "grant_p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "grant_max_ms": round(max(lat) * 1000, 2),
            "give_back_p50_ms": round(statistics.median(back) * 1000, 2),
            "give_back_p99_ms": round(percentile(back, 0.99) * 1000, 2),
            "initiators_cpu_s": round(f["cpu"], 2),
            "ratio_to_etcd_puts": round(grants_per_s / baseline, 2)})
    for echoed, granted in zip(report["phases"][::2], report["phases"][1::2]):
        granted["p99_vs_echo"] = round(granted["grant_p99_ms"] / max(echoed["grant_p99_ms"], 0.01), 1)
        granted["rate_vs_echo"] = round(granted["grants_per_s"] / echoed["grants_per_s"], 2)
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
              f"agents x {r['cores']} cores")
        for p in r["phases"]:
            what = ("leader" if p["kind"] == "grants" else "echo baseline (the same messages to an echo stream)")
            print(f"  {what}, offered {p['offered_grants_per_s']}: {p['grants_per_s']} grants/s "
                  f"({p['wants_answered_per_s']} wants answered/s, {p['elapsed_s']} s, {p['cores_granted']} cores); "
                  f"want sent -> answer holding it p50 {p['grant_p50_ms']} ms, p99 {p['grant_p99_ms']} ms, "
                  f"max {p['grant_max_ms']} ms; give back p50 {p['give_back_p50_ms']} ms, "
                  f"p99 {p['give_back_p99_ms']} ms"
                  + (f"; x{p['ratio_to_etcd_puts']} of etcd puts/s, x{p['rate_vs_echo']} of the echo's rate, "
                     f"p99 x{p['p99_vs_echo']} of the echo's" if p["kind"] == "grants" else ""))
        print(f"baseline, same run: sequential fenced etcd puts {r['baseline_etcd_puts_per_s']}/s "
              f"(a grant written to etcd would cost one)")
    granted = [p for p in r["phases"] if p["kind"] == "grants"]
    ok = (max(p["grants_per_s"] for p in granted) >= 2000 and granted[0]["grant_p99_ms"] <= 10
          and r["lent_after"] == 0)
    if not ok:
        print("target missed: want >= 2000 grants/s, p99 <= 10 ms at the offered rate, every core given back",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
