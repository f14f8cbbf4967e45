"""A gunicorn worker whose threads never wait for a slow client's request headers.

gunicorn's gthread worker hands a connection to a thread as soon as its
first bytes arrive; the thread then reads the request head with blocking
reads and no deadline. A client that sends one header line every few
seconds holds that thread for as long as it likes, and twenty such clients
(2 workers x 8 threads) took every page offline, /healthz and /leader
included.

HeaderGuardWorker reads the request head in the worker's event loop
instead, with non-blocking reads (and a non-blocking TLS handshake): a
connection reaches a thread only once its whole head has arrived, with
the bytes read so far handed to gunicorn's parser. A head not complete
within HEADER_TIMEOUT seconds closes the connection. The same applies to
each further request of a kept-alive connection. Slow clients then cost a
socket and a small buffer each, bounded by gunicorn's worker_connections
per worker; request bodies are still read by the thread (they are small:
MAX_CONTENT_LENGTH, and the app reads them only after authentication).

Select it with `--worker-class web.worker.HeaderGuardWorker` (web/serve.py).
It relies on gunicorn's gthread internals (TConn, enqueue_req, the parser's
unreader); tests/e2e/test_web_process.py runs it under the real server.
"""
from __future__ import annotations

import errno
import selectors
import ssl
import time
from collections import deque
from functools import partial

from gunicorn import http, sock as gsock
from gunicorn.workers.gthread import TConn, ThreadWorker

HEADER_TIMEOUT = 10.0
# Heads being read at once from one client address; more are closed at once, so
# that one address cannot use up worker_connections with idle sockets.
MAX_HEADS_PER_ADDRESS = 64
_READ = 64 * 1024
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")  # the parser decides whether a bare LF is acceptable


class HeaderGuardWorker(ThreadWorker):
    """gthread, with request heads read by the event loop under a deadline."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: deque = deque()  # connections whose head is being read, oldest first
        self.heads_by_address: dict[str, int] = {}
        self._ssl_context = None
        # The most a head may hold (gunicorn's own limits); more goes to the parser to refuse.
        self._head_limit = (self.cfg.limit_request_line + self.cfg.limit_request_fields
                            * (self.cfg.limit_request_field_size + 2) + 4)

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise  # as gthread does: out of file descriptors is the arbiter's business
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking now
        if self.cfg.is_ssl:
            try:
                conn.sock = self._context().wrap_socket(
                    conn.sock, server_side=True, do_handshake_on_connect=False,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            except (OSError, ValueError):
                self._drop(conn)
                return
            conn.handshaking = True
        self._read_head(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has a next request coming: read its head here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_head(conn)

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = gsock.ssl_context(self.cfg)
        return self._ssl_context

    def _read_head(self, conn) -> None:
        address = _address(conn)
        if self.heads_by_address.get(address, 0) >= MAX_HEADS_PER_ADDRESS:
            self._drop(conn)
            return
        self.heads_by_address[address] = self.heads_by_address.get(address, 0) + 1
        conn.head = bytearray()
        conn.head_deadline = time.monotonic() + HEADER_TIMEOUT
        self.reading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn, _fileobj) -> None:
        try:
            if getattr(conn, "handshaking", False):
                conn.sock.do_handshake()
                conn.handshaking = False
            while True:
                data = conn.sock.recv(_READ)
                if not data:  # the client went away
                    self._stop_reading(conn)
                    self._drop(conn)
                    return
                conn.head += data
                if any(end in conn.head for end in _HEAD_ENDS) or len(conn.head) > self._head_limit:
                    break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return  # more later; a TLS write-wait during the handshake is retried on the next read
        except OSError:
            self._stop_reading(conn)
            self._drop(conn)
            return
        self._stop_reading(conn)
        self._hand_over(conn)

    def _hand_over(self, conn) -> None:
        """The head is here: a thread serves the request, starting from the bytes read."""
        conn.sock.setblocking(True)
        if conn.parser is None:
            conn.initialized = True
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = None
        conn.data_ready = True
        self.enqueue_req(conn)

    def _stop_reading(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.reading.remove(conn)
        except ValueError:
            return
        address = _address(conn)
        left = self.heads_by_address.get(address, 1) - 1
        if left > 0:
            self.heads_by_address[address] = left
        else:
            self.heads_by_address.pop(address, None)

    def _drop(self, conn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Also close connections whose request head did not arrive in time."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading and (self.reading[0].head_deadline <= now or not self.alive):
            conn = self.reading[0]
            self._stop_reading(conn)
            self._drop(conn)


def _address(conn) -> str:
    client = conn.client
    return str(client[0]) if isinstance(client, (tuple, list)) and client else str(client)
