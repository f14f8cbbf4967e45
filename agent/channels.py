"""One gRPC channel per coordinator address, shared by every link to it.

An agent talks to at most a few coordinators (its primary and a backup) and
moves between them on every failover, handback and switchover. A channel per
link meant a new TCP connection (and TLS handshake) and a new channel
thread at each move, exactly when the move is on the clock; with a kept
channel a new link costs one HTTP/2 stream. The standby link to the next
leader and the link to the current one share a channel when they name the
same address. The bench pool (bench.pool) shares one `Channels` among its
agents, as it shares one etcd client.

gRPC reconnects a kept channel by itself (100 ms backoff doubling to 1 s),
so a coordinator that restarts is dialled again without a new channel; its
keepalive pings (cluster/keepalive.py) find a connection to a host that
dropped off the network without a word, so that one is dialled again too.
"""
from __future__ import annotations

import threading

import grpc

from cluster.keepalive import CLIENT_OPTIONS

# Keepalive pings find a connection to a host that vanished silently (cluster/keepalive.py).
OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
           ("grpc.max_reconnect_backoff_ms", 1000), *CLIENT_OPTIONS]


class Channels:
    """`get(address)` the channel to a coordinator's gRPC address (made on
    first use); `close()` closes them all (their streams end)."""

    def __init__(self, root_certificates: bytes | None = None, client: tuple[bytes, bytes] | None = None):
        """root_certificates: the CA that signs the coordinators' certificates (None:
        plaintext); client: this agent's (private key, certificate) PEM, which the
        coordinators require with TLS on (docs/design.md section 9)."""
        key, chain = client or (None, None)
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=root_certificates,
                                                          private_key=key, certificate_chain=chain)
                             if root_certificates is not None else None)
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, address: str) -> grpc.Channel:
        """Raises ValueError once closed (the agent is stopping)."""
        with self._lock:
            if self._closed:
                raise ValueError("channels closed: the agent is stopping")
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = (
                    grpc.secure_channel(address, self._credentials, options=OPTIONS)
                    if self._credentials is not None else grpc.insecure_channel(address, options=OPTIONS))
            return channel

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
