"""The fault-test harness works on real etcd traffic: proxy modes, a 3-member
cluster that loses and regains members, and the TLS-only member."""
from __future__ import annotations

import socket
import time

import pytest

from lease.client import connect
from lease.errors import ConfigError, EtcdError, EtcdUnavailable
from tests.harness.wait import wait_until


def _roundtrip(client, key: str, value: bytes) -> bool:
    client.put(key, value)
    return client.get(key)[0] == value


# -- TcpProxy ------------------------------------------------------------------

def test_proxy_passes_grpc_traffic(etcd_member, tcp_proxy, keys):
    proxy = tcp_proxy("127.0.0.1", etcd_member.client_port)
    client = connect(proxy.url("http"), timeout=2.0)
    try:
        assert _roundtrip(client, keys.settings, b"through-proxy")
        assert proxy.connections >= 1
    finally:
        client.close()


def test_proxy_drop_fails_calls_until_pass(etcd_member, tcp_proxy, keys):
    proxy = tcp_proxy("127.0.0.1", etcd_member.client_port)
    client = connect(proxy.url("http"), timeout=2.0)
    try:
        assert _roundtrip(client, keys.settings, b"before")
        proxy.set_mode("drop")
        assert proxy.connections == 0
        with pytest.raises(EtcdUnavailable):
            client.get(keys.settings)
        # New connections are refused too, also from a fresh client.
        fresh = connect(proxy.url("http"), timeout=1.0)
        try:
            with pytest.raises(EtcdUnavailable):
                fresh.get(keys.settings)
        finally:
            fresh.close()
        proxy.set_mode("pass")
        wait_until(lambda: client.get(keys.settings)[0] == b"before", 15,
                   message="client reconnects after the drop ends")
    finally:
        client.close()


def test_proxy_drop_resets_raw_connection(etcd_member, tcp_proxy):
    """A raw TCP peer sees its connection end (not silence) when the proxy drops."""
    proxy = tcp_proxy("127.0.0.1", etcd_member.client_port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        wait_until(lambda: proxy.connections == 1, 5)
        proxy.set_mode("drop")
        try:
            ended = s.recv(1) == b""
        except ConnectionResetError:
            ended = True
        assert ended


def test_proxy_blackhole_is_silent_and_heals(etcd_member, tcp_proxy, keys):
    proxy = tcp_proxy("127.0.0.1", etcd_member.client_port)
    client = connect(proxy.url("http"), timeout=1.0)
    try:
        assert _roundtrip(client, keys.settings, b"before")
        proxy.set_mode("blackhole")
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            client.get(keys.settings)
        # Silence, not a refusal: the call ran into its own deadline, and the
        # proxy still holds the connection open.
        assert time.monotonic() - started >= 0.9
        assert proxy.connections >= 1
        proxy.set_mode("pass")
        wait_until(lambda: client.get(keys.settings)[0] == b"before", 15,
                   message="client works again after the partition heals")
    finally:
        client.close()


def test_proxy_blackhole_raw_socket_hears_nothing(etcd_member, tcp_proxy):
    """Bytes sent into a blackhole get no answer; they are delivered once it heals."""
    proxy = tcp_proxy("127.0.0.1", etcd_member.client_port)
    proxy.set_mode("blackhole")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(100)
        proxy.set_mode("pass")
        s.settimeout(10)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.0 200") and b"health" in reply


def test_proxy_rejects_unknown_mode(tcp_proxy):
    proxy = tcp_proxy("127.0.0.1", 9)
    with pytest.raises(ValueError, match="mode"):
        proxy.set_mode("flaky")


# -- EtcdCluster ---------------------------------------------------------------

def test_cluster_survives_losing_one_member(etcd_cluster, keys):
    client = connect(etcd_cluster.urls, timeout=2.0)
    try:
        assert _roundtrip(client, keys.settings, b"v1")
        leader = etcd_cluster.wait_quorum()
        etcd_cluster.kill(etcd_cluster.members.index(leader))
        new_leader = etcd_cluster.wait_quorum()
        assert new_leader is not leader and new_leader.alive
        wait_until(lambda: _roundtrip(client, keys.settings, b"v2"), 20,
                   message="writes succeed with two of three members")
        assert client.get(keys.settings)[0] == b"v2"
    finally:
        client.close()


def test_cluster_loses_quorum_with_two_members_paused(etcd_cluster, keys):
    client = connect(etcd_cluster.urls, timeout=1.0)
    try:
        assert _roundtrip(client, keys.settings, b"v1")
        etcd_cluster.pause(0)
        etcd_cluster.pause(1)
        # One member alone cannot commit: writes fail (no quorum).
        alone = connect(etcd_cluster.members[2].client_url, timeout=1.0)
        try:
            with pytest.raises(EtcdError):
                alone.put(keys.settings, b"lost")
        finally:
            alone.close()
        etcd_cluster.resume(0)
        etcd_cluster.resume(1)
        etcd_cluster.wait_quorum()
        wait_until(lambda: _roundtrip(client, keys.settings, b"v3"), 20,
                   message="writes succeed after resume")
    finally:
        client.close()


def test_paused_member_catches_up_after_resume(etcd_cluster, keys):
    client = connect(etcd_cluster.urls, timeout=2.0)
    try:
        etcd_cluster.pause(2)
        etcd_cluster.wait_quorum()
        wait_until(lambda: _roundtrip(client, keys.settings, b"while-paused"), 20)
        etcd_cluster.resume(2)
        direct = connect(etcd_cluster.members[2].client_url, timeout=2.0)
        try:
            wait_until(lambda: direct.get(keys.settings)[0] == b"while-paused", 20,
                       message="resumed member serves the write it missed")
        finally:
            direct.close()
    finally:
        client.close()


def test_restarted_member_keeps_data_and_ports(etcd_cluster, keys):
    client = connect(etcd_cluster.urls, timeout=2.0)
    try:
        assert _roundtrip(client, keys.settings, b"durable")
        member = etcd_cluster.members[1]
        url_before = member.client_url
        etcd_cluster.restart(1)
        assert member.client_url == url_before and member.alive
        direct = connect(member.client_url, timeout=2.0)
        try:
            wait_until(lambda: direct.get(keys.settings)[0] == b"durable", 20)
        finally:
            direct.close()
        assert etcd_cluster.wait_quorum() is not None
    finally:
        client.close()


# -- TLS etcd ------------------------------------------------------------------

def test_tls_etcd_accepts_client_with_ca(tls_etcd, keys):
    assert tls_etcd.client_url.startswith("https://")
    client = connect(tls_etcd.client_url, timeout=2.0, ca_cert=tls_etcd.tls["ca"])
    try:
        assert _roundtrip(client, keys.settings, b"secret")
    finally:
        client.close()


def test_tls_etcd_refuses_plain_http(tls_etcd, keys):
    plain = connect(f"http://127.0.0.1:{tls_etcd.client_port}", timeout=1.0)
    try:
        with pytest.raises(EtcdError):
            plain.get(keys.settings)
    finally:
        plain.close()


def test_tls_etcd_needs_a_ca(tls_etcd):
    with pytest.raises(ConfigError, match="CA"):
        connect(tls_etcd.client_url, timeout=1.0)


def test_tls_etcd_refuses_unknown_ca(tls_etcd, tmp_path, keys):
    from cli.certs import make_ca

    other = make_ca(tmp_path / "other-ca")
    client = connect(tls_etcd.client_url, timeout=1.0, ca_cert=str(other.cert_path))
    try:
        with pytest.raises(EtcdError):
            client.get(keys.settings)
    finally:
        client.close()


def test_proxy_carries_tls_grpc(tls_etcd, tcp_proxy, keys):
    proxy = tcp_proxy("127.0.0.1", tls_etcd.client_port)
    client = connect(proxy.url("https"), timeout=2.0, **tls_etcd.connect_kwargs())
    try:
        assert _roundtrip(client, keys.settings, b"tls-through-proxy")
        proxy.set_mode("blackhole")
        with pytest.raises(EtcdUnavailable):
            client.get(keys.settings)
        proxy.set_mode("pass")
        wait_until(lambda: client.get(keys.settings)[0] == b"tls-through-proxy", 15)
    finally:
        client.close()
