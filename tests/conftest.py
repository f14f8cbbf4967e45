"""Shared fixtures: a real etcd for the whole session, a unique cluster per test."""
from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from cluster.keys import Keys
from lease.client import connect
from tests.harness.cluster import EtcdCluster
from tests.harness.etcd import start_single
from tests.harness.proxy import proxy_factory
from tests.harness.tls import TlsEtcd

# The `baton run`s the tests start keep their scan cache (cli/scan_cache.py) here, not in ~/.cache.
os.environ.setdefault("BATON_CACHE_DIR", tempfile.mkdtemp(prefix="baton-test-cache-"))


@pytest.fixture(scope="session")
def etcd_member(tmp_path_factory):
    """One real etcd member shared by every test that does not break etcd."""
    member = start_single(tmp_path_factory.mktemp("etcd"))
    yield member
    member.stop()


@pytest.fixture
def etcd_url(etcd_member) -> str:
    return etcd_member.client_url


@pytest.fixture
def cluster_name() -> str:
    """A cluster name of its own per test, so tests sharing etcd never see each other's keys."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def keys(cluster_name) -> Keys:
    return Keys(cluster_name)


@pytest.fixture
def etcd(etcd_url):
    """A connected lease.client.Etcd on the shared member."""
    client = connect(etcd_url, timeout=2.0)
    yield client
    client.close()


@pytest.fixture
def etcd_cluster(tmp_path):
    """A fresh 3-member etcd cluster per test (tests kill, pause and restart members)."""
    cluster = EtcdCluster(tmp_path / "cluster", size=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def tls_etcd(tmp_path_factory):
    """One TLS-only etcd member (https clients and peers) with a CA and a
    certificate for localhost/127.0.0.1: `.client_url`, `.tls` {"ca", "cert", "key"}."""
    server = TlsEtcd(tmp_path_factory.mktemp("tls-etcd")).start()
    yield server
    server.stop()


@pytest.fixture
def tcp_proxy():
    """Factory: tcp_proxy(host, port) -> a TcpProxy closed when the test ends."""
    make, close_all = proxy_factory()
    yield make
    close_all()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, append the logs of the etcd members the test used."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("etcd_member", "etcd_cluster", "tls_etcd"):
            fixture = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            members = getattr(fixture, "members", None) or ([fixture] if fixture is not None else [])
            for m in members:
                if hasattr(m, "log_tail"):
                    report.sections.append((f"etcd log {m.name}", m.log_tail()))
