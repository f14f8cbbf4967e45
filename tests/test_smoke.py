from tests.harness.wait import wait_until


def test_etcd_round_trip(etcd, keys):
    etcd.put(keys.settings, b"{}")
    value, meta = etcd.get(keys.settings)
    assert value == b"{}"
    assert wait_until(lambda: etcd.get(keys.settings)[0] == b"{}", 2)
