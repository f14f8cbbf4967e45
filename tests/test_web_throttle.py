"""Login throttling is shared by every gunicorn worker of every coordinator (counts in etcd)."""
import multiprocessing

from cluster.keys import Keys
from lease.client import connect
from web.throttle import EtcdCounts, LoginThrottle


def _throttle(url, cluster, clock, **kw):
    client = connect(url, timeout=2.0)
    return LoginThrottle(5, 60.0, clock, EtcdCounts(lambda: client), keys=Keys(cluster), **kw)


def _fail_once(url, cluster, user, address):
    # A process of its own, with its own etcd client, as a gunicorn worker (or the backup) has.
    _throttle(url, cluster, lambda: 1000.0).failed(user, address)


def test_failures_in_several_workers_add_up(etcd_url, cluster_name):
    clock = lambda: 1000.0  # noqa: E731
    # Failures counted by four other processes (as gunicorn workers would be) ...
    ctx = multiprocessing.get_context("spawn")
    for _ in range(4):
        p = ctx.Process(target=_fail_once, args=(etcd_url, cluster_name, "admin", "10.0.0.9"))
        p.start()
        p.join(30)
        assert p.exitcode == 0
    here = _throttle(etcd_url, cluster_name, clock)
    assert here.seconds_locked("admin", "10.0.0.9") == 0
    # ... and the fifth in this one locks the pair out for everyone.
    here.failed("admin", "10.0.0.9")
    assert here.seconds_locked("admin", "10.0.0.9") == 60.0
    assert _throttle(etcd_url, cluster_name, clock).seconds_locked("admin", "10.0.0.9") == 60.0
    assert here.seconds_locked("admin", "10.0.0.10") == 0


def test_lockout_ends_and_success_resets(etcd_url, cluster_name):
    now = {"t": 0.0}
    throttle = LoginThrottle(3, 10.0, lambda: now["t"], EtcdCounts(lambda: client), keys=Keys(cluster_name))
    client = connect(etcd_url, timeout=2.0)
    throttle.failed("u", "a")
    throttle.failed("u", "a")
    throttle.succeeded("u", "a")
    throttle.failed("u", "a")
    assert throttle.seconds_locked("u", "a") == 0, "a success forgets earlier failures"
    throttle.failed("u", "a")
    throttle.failed("u", "a")
    assert throttle.seconds_locked("u", "a") == 10.0
    now["t"] = 10.5
    assert throttle.seconds_locked("u", "a") == 0


def test_an_address_is_locked_whatever_the_names(etcd_url, cluster_name):
    throttle = _throttle(etcd_url, cluster_name, lambda: 5.0, address_max=6)
    for i in range(5):
        throttle.failed(f"name{i}", "10.0.0.7")
    assert throttle.seconds_locked("someone", "10.0.0.7") == 0
    throttle.failed("name5", "10.0.0.7")
    assert throttle.seconds_locked("someone", "10.0.0.7") == 60.0
    assert throttle.seconds_locked("someone", "10.0.0.8") == 0


def test_the_keys_go_away_by_themselves(etcd, etcd_url, keys):
    throttle = _throttle(etcd_url, keys.cluster, lambda: 5.0)
    throttle.failed("a/b c", "::1")
    kvs = etcd.get_prefix(keys.throttle)
    assert sorted(meta.key.decode() for _, meta in kvs) == [keys.throttle + "address/%3A%3A1",
                                                           keys.throttle + "login/%3A%3A1/a%2Fb%20c"]
    assert all(meta.lease_id for _, meta in kvs), "every count has a lease"
