"""The bench pool (bench.pool_process) in a cluster with every trust check on, as
`baton up` runs it: client certificates on the coordinators' gRPC and etcd with
client-certificate auth and roles. bench/failover.py --tls depends on it."""
from __future__ import annotations

from bench.pool_process import PoolProcess


def test_pool_agents_connect_with_tls_and_etcd_auth(make_cluster):
    cluster = make_cluster(tls=True, agents=0, backups=0, web=False)
    assert cluster.etcd_auth
    pool = PoolProcess(cluster, 3, cores=1, prefix="pool-")
    try:
        cluster.wait_agents(3, timeout=60, coordinator="p1")
        assert sorted(cluster.agent_records()) == ["pool-1", "pool-2", "pool-3"]
        assert pool.alive, pool.log_tail()
    finally:
        pool.stop()
