"""How many tasks per second does one Runtime dispatch, and how quickly?

    python bench/dispatch.py [--transport sync|aio] [--agents 50] [--cores 4] [--builds 4]
                             [--tasks 5000] [--chains 50] [--chain-length 20] [--etcd URL] [--json]

Everything is real: a single-member etcd (started here unless --etcd is
given), a Session + Election for the epoch, the Runtime served on a gRPC
server on 127.0.0.1 (`--transport aio`, the default: AioAgentServer, what the
daemon serves; `sync`: bench/sync_service.py on a threaded grpc.server), and an agent
pool in a child process (grpc.aio, so that it neither shares the
coordinator's interpreter lock nor eats much of the machine): `--agents`
agents with `--cores` cores each, one gRPC stream per agent, presence keys
with a lease, completing every task at once (exit 0). Every state change is durable
(running before the assignment, the result before the ack).

Measured:
- raw etcd write rate: sequential fenced transactions of 128 puts (ops/s);
- throughput: `--builds` builds of `--tasks` independent no-op tasks
  submitted at once; tasks/s from submission to the last build done, and
  its ratio to the raw write rate (each task costs 2 writes);
- scheduling latency: `--chains` chains of `--chain-length` tasks (each
  depends on the previous): from the agent receiving the ack of a task's
  dependency (the dependency is durable: the dependant is ready) to an
  agent receiving the dependant's Assignment; p50/p99. Measured twice:
  the chains alone, and under that load (as many chains as a fair share of
  the cores, submitted with `--builds` more throughput builds, which are
  still running when the chains end). A dependant is usually placed in the
  same transaction as its dependency's result (results.py), and the ack
  and that Assignment usually travel in one Batch message, so this is
  mostly 0: the dependant is assigned the moment its dependency is durable.
  For the whole hop, the bench also prints result sent -> next Assignment
  received (one etcd commit included).

Targets (issue "Coordinator, agents and builds"): >= 3,000 tasks/s, p99 <=
20 ms. Exits 1 if one is missed.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import statistics
import sys
import tempfile
import time
import uuid
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from cluster.keepalive import SERVER_OPTIONS  # noqa: E402
from coordinator.config import Timings  # noqa: E402
from cluster.keys import Keys, decode, encode  # noqa: E402
from cluster.protocol import agent_pb2 as pb  # noqa: E402
from cluster.protocol import agent_pb2_grpc, unbatched  # noqa: E402
from bench.sync_service import add_to_server  # noqa: E402
from coordinator.runtime.aio_service import AioAgentServer  # noqa: E402
from coordinator.runtime.runtime import Runtime  # noqa: E402
from lease.client import connect  # noqa: E402
from lease.election import Election, Fence  # noqa: E402
from lease.session import Session  # noqa: E402
from tests.harness.etcd import start_single  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.wait import wait_until  # noqa: E402

TOKEN = "bench-token"


# -- the agent pool (child process) ---------------------------------------------------
# grpc.aio on one event loop, so that the pool costs the shared machine as
# little CPU as possible (real agents run elsewhere).
async def _pool(address: str, epoch: int, etcd_url: str, cluster: str, count: int, cores: int,
                commands: multiprocessing.Queue, replies: multiprocessing.Queue) -> None:
    import asyncio

    keys = Keys(cluster)
    etcd = connect(etcd_url, timeout=5.0)
    lease = etcd.lease_grant(30)
    received: dict[tuple, float] = {}   # (build, task) -> when its Assignment arrived
    acked: dict[tuple, float] = {}      # (build, task) -> when its ResultAck arrived
    for i in range(count):
        etcd.put(keys.agent(f"bench-{i}"), encode({"name": f"bench-{i}", "cores": cores}), lease=lease)

    async def agent(name: str, channel) -> None:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(
            metadata=[("authorization", f"Bearer {TOKEN}")])
        await call.write(pb.AgentMessage(epoch=epoch, hello=pb.Hello(name=name, host="bench", cores=cores)))
        try:
            async for message in call:
                now = time.monotonic()  # the messages of a Batch arrived together
                for m in unbatched(message):
                    body = m.WhichOneof("body")
                    if body == "assign":
                        ref = m.assign.task
                        received[(ref.build_id, ref.task_id)] = now
                        await call.write(pb.AgentMessage(epoch=epoch, result=pb.TaskResult(task=ref, exit_code=0)))
                    elif body == "ack":
                        acked[(m.ack.task.build_id, m.ack.task.task_id)] = now
        except (grpc.RpcError, asyncio.CancelledError):
            pass

    channels = [grpc.aio.insecure_channel(address) for _ in range(count)]
    agents = [asyncio.ensure_future(agent(f"bench-{i}", channels[i])) for i in range(count)]
    replies.put("ready")
    loop = asyncio.get_running_loop()
    last_keepalive = time.monotonic()
    while True:
        try:
            command = await loop.run_in_executor(None, commands.get, True, 1.0)
        except queue.Empty:
            command = None
        if time.monotonic() - last_keepalive > 5:
            etcd.lease_keepalive(lease)
            last_keepalive = time.monotonic()
        if command == "report":
            replies.put((dict(received), dict(acked), time.process_time()))
        elif command == "stop":
            break
    for a in agents:
        a.cancel()
    for c in channels:
        await c.close()
    etcd.lease_revoke(lease)
    etcd.close()


def pool_main(*args) -> None:
    import asyncio

    asyncio.run(_pool(*args))


# -- measurements -----------------------------------------------------------------------
def raw_write_rate(etcd, keys: Keys, epoch: int, seconds: float = 2.0) -> float:
    """Sequential fenced 128-put transactions: etcd's batched write rate (ops/s)."""
    fence = Fence(etcd, keys.leader, epoch).compare()
    value = encode({"state": "running", "attempt": 1, "agent": "bench-0", "assigned": time.time()})
    ops = 0
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        batch = [etcd.ops.put(f"{keys.root}raw/{n}/{i}", value) for i in range(128)]
        ok, _ = etcd.txn([fence], batch, [])
        assert ok
        ops += 128
        n += 1
    rate = ops / (time.monotonic() - start)
    etcd.delete_prefix(keys.root + "raw/")
    return rate


def submit(etcd, keys: Keys, build_id: str, tasks: list[dict]) -> None:
    spec = {"id": build_id, "name": build_id, "submitted": time.time(), "user": "bench", "tasks": tasks}
    etcd.put(keys.build(build_id), encode(spec))


def wait_done(etcd, keys: Keys, build_ids: list[str], timeout: float) -> None:
    def all_done():
        for b in build_ids:
            status = decode(etcd.get(keys.status_of_build(b))[0]) or {}
            if status.get("state") not in ("done", "failed"):
                return False
        return True

    wait_until(all_done, timeout, interval=0.02, message="builds done")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def chain_tasks(chains: int, length: int) -> list[dict]:
    """`chains` chains of `length` no-op tasks, each link depending on the one before."""
    return [{"id": f"c{c}-{j}", "cmd": "true", "deps": [f"c{c}-{j - 1}"] if j else [], "timeout": 0, "env": {}}
            for c in range(chains) for j in range(length)]


def link_latencies(received: dict, since: dict, build_id: str, chains: int, length: int) -> list[float]:
    """For every link after the first: its dependency's moment in `since` (its ack, or its
    Assignment, when the pool sent its result at once) -> its own Assignment."""
    return [received[(build_id, f"c{c}-{j}")] - since[(build_id, f"c{c}-{j - 1}")]
            for c in range(chains) for j in range(1, length)]


def bench_etcd(url: str | None):
    """(the etcd member started here or None, its URL): `url` if given, else a new single member."""
    if url:
        return None, url
    member = start_single(Path(tempfile.mkdtemp(prefix="baton-bench-")))
    return member, member.client_url


def run(args) -> dict:
    member, url = bench_etcd(args.etcd)
    etcd = connect(url, timeout=5.0)
    keys = Keys("bench" + uuid.uuid4().hex[:8])
    session = Session(etcd, ttl=10, healthy=lambda: True).start()
    election = Election(etcd, keys.leader, session)
    assert election.campaign(encode({"name": "bench"}))
    epoch = election.epoch
    raw = raw_write_rate(etcd, keys, epoch)

    runtime = Runtime(etcd, keys, "bench", Timings(ttl=10), agent_token=TOKEN,
                      on_not_leader=lambda: print("lost leadership!", file=sys.stderr))
    port = free_port()
    if args.transport == "aio":
        server = AioAgentServer(runtime, f"127.0.0.1:{port}")
        server.start()
    else:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.agents + 16), options=SERVER_OPTIONS)
        add_to_server(runtime, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
    runtime.start(epoch)

    ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork()
    commands, replies = ctx.Queue(), ctx.Queue()
    pool = ctx.Process(target=pool_main, args=(f"127.0.0.1:{port}", epoch, url, keys.cluster, args.agents,
                                               args.cores, commands, replies), daemon=True)
    pool.start()
    try:
        assert replies.get(timeout=60) == "ready"
        wait_until(lambda: runtime.stats()["agents_connected"] == args.agents, 60, message="agents connected")

        # Throughput: independent no-op tasks, more than the cores.
        tasks = [{"id": f"t{j}", "cmd": "true", "deps": [], "timeout": 0, "env": {}} for j in range(args.tasks)]
        build_ids = [f"tp{i}" for i in range(args.builds)]
        start = time.monotonic()
        cpu_start = time.process_time()
        for b in build_ids:
            submit(etcd, keys, b, tasks)
        wait_done(etcd, keys, build_ids, timeout=600)
        elapsed = time.monotonic() - start
        cpu = time.process_time() - cpu_start
        total = args.builds * args.tasks
        throughput = total / elapsed

        # Latency, alone: chains, each link ready when its dependency is durable.
        submit(etcd, keys, "chains", chain_tasks(args.chains, args.chain_length))
        wait_done(etcd, keys, ["chains"], timeout=600)
        # Latency under that load: the same chains (as many as their fair share
        # of the cores) while the throughput builds run again beside them.
        loaded_chains = min(args.chains, args.agents * args.cores // (args.builds + 1))
        loaded_ids = [f"load{i}" for i in range(args.builds)]
        for b in loaded_ids:
            submit(etcd, keys, b, tasks)
        submit(etcd, keys, "chains-loaded", chain_tasks(loaded_chains, args.chain_length))
        wait_done(etcd, keys, ["chains-loaded"], timeout=600)
        load_statuses = [decode(etcd.get(keys.status_of_build(b))[0]) or {} for b in loaded_ids]
        overlapped = all(s.get("state") not in ("done", "failed") for s in load_statuses)
        wait_done(etcd, keys, loaded_ids, timeout=600)
        commands.put("report")
        received, acked, pool_cpu = replies.get(timeout=60)
        latencies = link_latencies(received, acked, "chains", args.chains, args.chain_length)
        loaded = link_latencies(received, acked, "chains-loaded", loaded_chains, args.chain_length)
        # The whole hop, with its etcd commit: the dependency's result sent -> the dependant assigned.
        hops = link_latencies(received, received, "chains", args.chains, args.chain_length)
        loaded_hops = link_latencies(received, received, "chains-loaded", loaded_chains, args.chain_length)
        txn_times = list(runtime._dispatcher.store.txn_seconds)
        early = runtime.stats()
        statuses = [decode(etcd.get(keys.status_of_build(b))[0])
                    for b in build_ids + loaded_ids + ["chains", "chains-loaded"]]
        assert all(s["state"] == "done" and s["done"] == s["total"] for s in statuses), statuses
    finally:
        commands.put("stop")
        pool.join(20)
        if pool.is_alive():
            pool.kill()
        runtime.stop("bench over")
        server.stop(None)
        election.resign()
        session.close()
        etcd.close()
        if member is not None:
            member.stop()
    return {
        "transport": args.transport, "agents": args.agents, "cores": args.cores, "tasks": total,
        "tasks_per_s": round(throughput), "elapsed_s": round(elapsed, 2),
        "coordinator_cpu_us_per_task": round(cpu / total * 1e6),
        "pool_cpu_s_total": round(pool_cpu, 2),
        "raw_etcd_ops_per_s": round(raw), "ratio_to_raw": round(throughput / raw, 3),
        "latency_samples": len(latencies),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "latency_max_ms": round(max(latencies) * 1000, 2),
        "released_early": early["released_early"], "placed_early": early["placed_early"],
        "hop_p50_ms": round(statistics.median(hops) * 1000, 2),
        "hop_p99_ms": round(percentile(hops, 0.99) * 1000, 2),
        "loaded_hop_p50_ms": round(statistics.median(loaded_hops) * 1000, 2),
        "loaded_hop_p99_ms": round(percentile(loaded_hops, 0.99) * 1000, 2),
        "loaded_chains": loaded_chains, "loaded_overlapped": overlapped,
        "loaded_latency_p50_ms": round(statistics.median(loaded) * 1000, 2),
        "loaded_latency_p99_ms": round(percentile(loaded, 0.99) * 1000, 2),
        "loaded_latency_max_ms": round(max(loaded) * 1000, 2),
        "txn_p50_ms": round(statistics.median(txn_times) * 1000, 2),
        "txn_p99_ms": round(percentile(txn_times, 0.99) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--builds", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--chain-length", type=int, default=20)
    parser.add_argument("--etcd", default=None, help="use this etcd instead of starting one")
    parser.add_argument("--transport", choices=("sync", "aio"), default="aio",
                        help="aio: AioAgentServer (what the daemon serves); "
                             "sync: bench/sync_service.py on a threaded grpc.server")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['tasks']} no-op tasks on {args.agents} agents x {args.cores} cores ({args.transport} gRPC): "
              f"{result['tasks_per_s']} tasks/s ({result['elapsed_s']} s; coordinator process "
              f"{result['coordinator_cpu_us_per_task']} us CPU per task; agent pool process "
              f"{result['pool_cpu_s_total']} s CPU in all)")
        print(f"raw etcd batched writes (128-op fenced txns): {result['raw_etcd_ops_per_s']} ops/s; "
              f"tasks/s / raw ops/s = {result['ratio_to_raw']} (each task is 2 writes)")
        print(f"scheduling latency (dependency acked -> assignment received), "
              f"{result['latency_samples']} samples: p50 {result['latency_p50_ms']} ms, "
              f"p99 {result['latency_p99_ms']} ms, max {result['latency_max_ms']} ms")
        print(f"  under load ({result['loaded_chains']} chains beside {args.builds} builds of {args.tasks} tasks, "
              f"{'still running' if result['loaded_overlapped'] else 'NOT overlapping'} when the chains ended): "
              f"p50 {result['loaded_latency_p50_ms']} ms, p99 {result['loaded_latency_p99_ms']} ms, "
              f"max {result['loaded_latency_max_ms']} ms")
        print(f"whole chain hop (result sent -> next link's Assignment, one etcd commit): alone p50 "
              f"{result['hop_p50_ms']} ms, p99 {result['hop_p99_ms']} ms; under load p50 "
              f"{result['loaded_hop_p50_ms']} ms, p99 {result['loaded_hop_p99_ms']} ms")
        print(f"dependants released with their dependency's result: {result['released_early']}, "
              f"placed in the same transaction: {result['placed_early']}")
        print(f"etcd transaction round trips (group commit, last 10000): p50 {result['txn_p50_ms']} ms, "
              f"p99 {result['txn_p99_ms']} ms")
    ok = (result["tasks_per_s"] >= 3000 and result["latency_p99_ms"] <= 20
          and result["loaded_latency_p99_ms"] <= 20)
    if not ok:
        print("target missed: want >= 3000 tasks/s and p99 <= 20 ms", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
