"""A TCP proxy that can cut a link, for network-fault tests.

`TcpProxy(host, port)` listens on a free loopback port and forwards every
connection to host:port byte for byte, so it carries anything: gRPC
(HTTP/2), TLS, HTTP. `set_mode` changes what the link does, at once, for
existing and new connections:

- "pass": forward in both directions.
- "drop": close every connection abortively (RST) and refuse new ones the
  same way, as when a process dies or a firewall rejects: the peer finds out
  at once.
- "blackhole": keep connections open but forward nothing in either
  direction; new connections are accepted and then hear nothing. This is a
  network partition: the peer finds out only through its own timeouts
  (gRPC keepalive, call deadlines). Bytes that arrived meanwhile are held and
  delivered if the mode goes back to "pass" (TCP would retransmit them).
- "mute": forward what the client sends, hold what the server answers
  (delivered if the mode goes back to "pass"). The server acts on requests
  whose answers the client does not get before its deadline: a write whose
  outcome is unknown to the client, though it was applied.

Each connection uses two pump threads (one per direction). A pump reads only
while the mode is "pass", so in "blackhole" the kernel buffers fill and the
sender blocks, as on a real dead link.
"""
from __future__ import annotations

import socket
import struct
import threading
from typing import Callable

MODES = ("pass", "drop", "blackhole", "mute")
_CHUNK = 65536


def _abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) and wake any thread blocked on the socket."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        # shutdown wakes a recv() blocked in another thread; close alone does not.
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One proxied connection: client socket, upstream socket, two pumps."""

    def __init__(self, proxy: "TcpProxy", client: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._done = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="proxy-link", daemon=True).start()

    def _run(self) -> None:
        # Connect upstream only once the link passes: during a blackhole the
        # SYN would not get through either.
        if self.proxy._wait_pass() != "pass":
            self.abort()
            return
        try:
            upstream = socket.create_connection(self.proxy.target, timeout=5)
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self.abort()
            return
        with self._lock:
            if self.closed:
                _abort(upstream)
                return
            self.upstream = upstream
        threading.Thread(target=self._pump, args=(self.client, upstream), daemon=True,
                         name="proxy-c2u").start()
        self._pump(upstream, self.client, replies=True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool = False) -> None:
        try:
            while True:
                if self.proxy._wait_pass(replies) != "pass":
                    break
                data = src.recv(_CHUNK)
                if not data:
                    # Half-close: pass the EOF on, let the other direction finish.
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    break
                # Hold what was read while the link is blackholed (or muted, for replies).
                if self.proxy._wait_pass(replies) != "pass":
                    break
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._done += 1
            finished = self._done >= 2 or self.proxy.mode == "drop" or self.proxy._closing
        if finished:
            self.abort()

    def abort(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            socks = [s for s in (self.client, self.upstream) if s is not None]
        for s in socks:
            _abort(s)
        self.proxy._forget(self)


class TcpProxy:
    """Forward 127.0.0.1:<port> to target_host:target_port; `set_mode` cuts the link."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.mode = "pass"
        self._closing = False
        self._cond = threading.Condition()
        self._links: set[_Link] = set()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((listen_host, 0))
        self._server.listen(128)
        self.port: int = self._server.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.listen_host}:{self.port}"

    @property
    def connections(self) -> int:
        """How many client connections are open through the proxy now."""
        with self._cond:
            return len(self._links)

    def set_mode(self, mode: str) -> None:
        """"pass", "drop", "blackhole" or "mute"; takes effect on existing connections at once."""
        if mode not in MODES:
            raise ValueError(f"proxy mode must be one of {MODES}, got {mode!r}")
        with self._cond:
            self.mode = mode
            links = list(self._links) if mode == "drop" else []
            self._cond.notify_all()
        for link in links:
            link.abort()

    def close(self) -> None:
        """Stop listening and abort every connection. Safe to call twice."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            links = list(self._links)
            self._cond.notify_all()
        _abort(self._server)
        for link in links:
            link.abort()
        self._accepter.join(5)

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------
    def _wait_pass(self, replies: bool = False) -> str:
        """Block while blackholed (replies: or muted); return "pass", "drop" or "closed"."""
        with self._cond:
            while (self.mode == "blackhole" or (replies and self.mode == "mute")) and not self._closing:
                self._cond.wait()
            if self._closing:
                return "closed"
            return "pass" if self.mode == "mute" else self.mode

    def _forget(self, link: _Link) -> None:
        with self._cond:
            self._links.discard(link)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            link = None
            with self._cond:
                # Decide and register under one lock, so a concurrent
                # set_mode("drop") either refuses this link here or aborts it.
                if not (self._closing or self.mode == "drop"):
                    link = _Link(self, client)
                    self._links.add(link)
            if link is None:
                _abort(client)
                if self._closing:
                    return
                continue
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # already aborted by a concurrent drop
            link.start()


def proxy_factory() -> tuple[Callable[..., TcpProxy], Callable[[], None]]:
    """(make, close_all): the tcp_proxy fixture's machinery, usable outside pytest."""
    made: list[TcpProxy] = []

    def make(target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> TcpProxy:
        proxy = TcpProxy(target_host, target_port, listen_host)
        made.append(proxy)
        return proxy

    def close_all() -> None:
        for proxy in made:
            proxy.close()

    return make, close_all
