"""The one etcd client factory.

`EtcdConfig` describes how to reach etcd (several endpoints, a timeout for
every call, optional TLS and user/password); `connect()` turns it into an
`Etcd` client. `Etcd` wraps python3-etcd3's multi-endpoint client so that:

- every call has a deadline (the library's own default is none);
- a failed endpoint is retried after `retry_after` seconds, not the
  library's 300, so a restarted member is used again quickly;
- an idempotent read that fails on one endpoint is retried once on the next;
- errors leave as lease.errors exceptions, never as grpc.RpcError.

Watches are not here: lease.watcher opens its own streams.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import etcd3
import etcd3.exceptions
import etcd3.transactions
from etcd3.client import KVMetadata
import grpc

from lease.errors import ConfigError, EtcdAuthError, EtcdError, EtcdUnavailable

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


@dataclasses.dataclass(frozen=True)
class EtcdConfig:
    """How to reach etcd. Build with `from_urls`, which validates."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    timeout: float = 2.0
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    retry_after: float = 1.0

    @classmethod
    def from_urls(cls, urls: str | Sequence[str] | None = None, **kw: Any) -> "EtcdConfig":
        """Parse "http://h:p,https://h2:p2"; defaults to BATON_ETCD, then localhost.

        Raises ConfigError naming the bad URL or option.
        """
        if urls is None:
            urls = os.environ.get("BATON_ETCD") or DEFAULT_ENDPOINT
        if isinstance(urls, str):
            urls = [u for u in (p.strip() for p in urls.split(",")) if u]
        cfg = cls(endpoints=tuple(urls), **kw)
        cfg.validate()
        return cfg

    @property
    def secure(self) -> bool:
        return any(urlsplit(u).scheme == "https" for u in self.endpoints)

    def validate(self) -> None:
        if not self.endpoints:
            raise ConfigError("etcd: no endpoint given")
        for url in self.endpoints:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"etcd endpoint {url!r} is not http(s)://host:port")
            try:
                parts.port
            except ValueError:
                raise ConfigError(f"etcd endpoint {url!r} has an invalid port") from None
        schemes = {urlsplit(u).scheme for u in self.endpoints}
        if len(schemes) > 1:
            raise ConfigError("etcd endpoints mix http and https; use one scheme for all")
        if self.timeout <= 0:
            raise ConfigError(f"etcd timeout must be > 0 seconds, got {self.timeout}")
        if self.secure and not self.ca_cert:
            raise ConfigError("etcd endpoints use https but no CA certificate was given (--etcd-ca)")
        if bool(self.cert) != bool(self.key):
            raise ConfigError("etcd client certificate and key must be given together")
        if bool(self.user) != bool(self.password):
            raise ConfigError("etcd user and password must be given together")
        for path in (self.ca_cert, self.cert, self.key):
            if path and not os.path.isfile(path):
                raise ConfigError(f"etcd TLS file {path!r} does not exist")


_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


# What etcd answers (as gRPC UNKNOWN) when the member we talk to has no quorum.
_NO_QUORUM_DETAILS = ("context deadline exceeded", "request timed out", "leader changed", "no leader")


def _no_quorum(detail: str | None) -> bool:
    return bool(detail) and any(text in detail for text in _NO_QUORUM_DETAILS)


def map_error(exc: BaseException) -> EtcdError:
    """Translate a client-library error into our hierarchy (never raises)."""
    if isinstance(exc, EtcdError):
        return exc
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        if code in _UNAVAILABLE_CODES or _no_quorum(detail):
            return EtcdUnavailable(f"etcd unavailable: {detail}")
        if code in _AUTH_CODES:
            return EtcdAuthError(f"etcd refused the credentials: {detail}")
        return EtcdError(f"etcd error {code}: {detail}")
    if isinstance(exc, (etcd3.exceptions.ConnectionFailedError,
                        etcd3.exceptions.ConnectionTimeoutError,
                        etcd3.exceptions.NoServerAvailableError)):
        return EtcdUnavailable(f"etcd unavailable: {exc}")
    if isinstance(exc, etcd3.exceptions.Etcd3Exception):
        return EtcdError(f"etcd error: {exc!r}")
    return EtcdError(f"etcd error: {exc!r}")


def _mapped(retry: bool) -> Callable:
    """Decorator: map errors; for idempotent calls retry once on another endpoint."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(self: "Etcd", *args: Any, **kwargs: Any) -> Any:
            attempts = 2 if retry and len(self.config.endpoints) > 1 else 1
            for attempt in range(attempts):
                try:
                    return fn(self, *args, **kwargs)
                except (grpc.RpcError, etcd3.exceptions.Etcd3Exception) as exc:
                    err = map_error(exc)
                    if not isinstance(err, EtcdUnavailable) or attempt + 1 == attempts:
                        raise err from exc
            raise AssertionError("unreachable")

        return call

    return wrap


class Etcd:
    """A connected etcd client. Thread-safe; create one per process (per
    gunicorn worker, after fork). Every method raises lease.errors only."""

    def __init__(self, config: EtcdConfig):
        config.validate()
        self.config = config
        self._lock = threading.Lock()
        creds = None
        if config.secure:
            creds = etcd3.MultiEndpointEtcd3Client.get_secure_creds(
                config.ca_cert, config.key, config.cert)
        endpoints = []
        for url in config.endpoints:
            parts = urlsplit(url)
            endpoints.append(etcd3.Endpoint(
                parts.hostname, parts.port or 2379, secure=config.secure, creds=creds,
                time_retry=config.retry_after,
                opts=[("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 2000),
                      ("grpc.initial_reconnect_backoff_ms", 100),
                      ("grpc.max_reconnect_backoff_ms", 1000),
                      ("grpc.min_reconnect_backoff_ms", 100),
                      # A new leader reads the whole cluster prefix at once; gRPC's
                      # default 4 MiB receive limit is reached after ~20k task records.
                      ("grpc.max_receive_message_length", 256 * 1024 * 1024)]))
        try:
            self.raw = etcd3.MultiEndpointEtcd3Client(
                endpoints=endpoints, timeout=config.timeout,
                user=config.user, password=config.password, failover=True)
        except (grpc.RpcError, etcd3.exceptions.Etcd3Exception) as exc:
            raise map_error(exc) from exc
        # Comparison and operation builders: etcd.txn_ops.put(...), etcd.compare.create(key) == rev
        self.ops = self.raw.transactions

    # -- endpoints -----------------------------------------------------------
    def current_target(self) -> str:
        """host:port of the endpoint in use, for TLS-aware raw channels (watches)."""
        return self.raw.endpoint_in_use.netloc

    def channel(self) -> grpc.Channel:
        """A gRPC channel to a healthy endpoint (used by lease.watcher and
        lease.session for their own streams)."""
        try:
            return self.raw.channel
        except (grpc.RpcError, etcd3.exceptions.Etcd3Exception, ValueError) as exc:
            raise map_error(exc) from exc

    def mark_failed(self) -> None:
        """Tell the client the endpoint in use failed, so the next call fails over."""
        try:
            self.raw.endpoint_in_use.fail()
            self.raw._clear_old_stubs()
        except Exception:  # noqa: BLE001 - best effort bookkeeping
            pass

    @property
    def call_kwargs(self) -> dict:
        """Credentials and metadata for raw stub calls (auth token)."""
        return {"credentials": self.raw.call_credentials, "metadata": self.raw.metadata}

    # -- reads ---------------------------------------------------------------
    @_mapped(retry=True)
    def get(self, key: str) -> tuple[bytes | None, Any]:
        """(value, metadata) or (None, None). metadata has create_revision, mod_revision, lease_id."""
        return self.raw.get(key)

    @_mapped(retry=True)
    def get_prefix(self, prefix: str, keys_only: bool = False) -> list[tuple[bytes, Any]]:
        return list(self.raw.get_prefix(prefix, keys_only=keys_only))

    @_mapped(retry=True)
    def get_range(self, start: str, end: str) -> list[tuple[bytes, Any]]:
        return list(self.raw.get_range(start, end))

    @_mapped(retry=True)
    def range_response(self, key: str, range_end: str | None = None, **kw: Any) -> Any:
        """The raw RangeResponse (header.revision, kvs with revisions), one round trip."""
        if range_end is None:
            return self.raw.get_response(key, **kw)
        return self.raw.get_range_response(key, range_end, **kw)

    @_mapped(retry=True)
    def read_together(self, ranges: Sequence[tuple[str, str | None]]) -> list[list[tuple[bytes, Any]]]:
        """Several reads at one revision, each a key (range_end None) or [key,
        range_end): for each, its (value, metadata) pairs, metadata with key,
        create_revision, mod_revision, lease_id and response_header (the first
        read's, so .revision is the snapshot's revision for all).

        Range reads pinned to the first one's revision, not a read-only
        transaction: etcd before 3.5.5 panics, and the member dies, when a
        read-only transaction's client deadline expires while etcd runs it
        (etcd-io/etcd#14110; a loaded machine is enough). Two round trips: the
        first read, then the others at its revision, all at once (the HA loop
        reads five ranges every cycle; in a row they took tens of ms under load)."""
        if not ranges:
            return []
        key, range_end = ranges[0]
        first = (self.raw.get_response(key) if range_end is None
                 else self.raw.get_range_response(key, range_end))
        header = first.header
        raw = self.raw
        pending = [raw.kvstub.Range.future(raw._build_get_range_request(key, range_end=end, revision=header.revision),
                                           raw.timeout, credentials=raw.call_credentials, metadata=raw.metadata)
                   for key, end in ranges[1:]]
        responses = [first, *(future.result() for future in pending)]
        return [[(kv.value, KVMetadata(kv, header)) for kv in resp.kvs] for resp in responses]

    @_mapped(retry=True)
    def revision(self, key: str = "\0") -> int:
        """The store's current revision, read with a linearizable get of key. With
        etcd auth on, pass a key the caller may read (docs/etcd-auth.md): etcd
        refuses a read outside the caller's permissions even of a missing key."""
        return self.raw.get_response(key).header.revision

    @_mapped(retry=True)
    def status(self) -> Any:
        return self.raw.status()

    # -- writes (never retried: a timed-out write may have been applied) ------
    @_mapped(retry=False)
    def put(self, key: str, value: bytes | str, lease: int | None = None) -> Any:
        return self.raw.put(key, value, lease=lease)

    @_mapped(retry=False)
    def delete(self, key: str) -> bool:
        return self.raw.delete(key)

    @_mapped(retry=False)
    def delete_prefix(self, prefix: str) -> Any:
        return self.raw.delete_prefix(prefix)

    @_mapped(retry=False)
    def txn(self, compare: Iterable, success: Iterable = (), failure: Iterable = ()) -> tuple[bool, list]:
        """One transaction: (succeeded, responses). It must write something:
        a read-only transaction can crash etcd < 3.5.5 (see read_together)."""
        success, failure = list(success), list(failure)
        if all(isinstance(op, etcd3.transactions.Get) for op in success + failure):
            raise ValueError("a read-only etcd transaction can crash etcd < 3.5.5 when its deadline "
                             "expires (etcd-io/etcd#14110); use read_together")
        return self.raw.transaction(compare=list(compare), success=success, failure=failure)

    @_mapped(retry=False)
    def compact(self, revision: int) -> None:
        self.raw.compact(revision, physical=True)

    # -- leases ---------------------------------------------------------------
    @_mapped(retry=False)
    def lease_grant(self, ttl: int) -> int:
        return self.raw.lease(ttl).id

    @_mapped(retry=False)
    def lease_keepalive(self, lease_id: int) -> int:
        """Renew once; returns the TTL etcd granted (<= 0 means the lease is gone)."""
        for response in self.raw.refresh_lease(lease_id):
            return int(response.TTL)
        return 0

    @_mapped(retry=True)
    def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on the lease as etcd sees it (-1 when it no longer exists)."""
        return int(self.raw.get_lease_info(lease_id).TTL)

    @_mapped(retry=True)
    def lease_granted_ttl(self, lease_id: int) -> int:
        """The TTL the lease was granted with (its holder's ttl); <= 0 when it no longer exists."""
        info = self.raw.get_lease_info(lease_id)
        return int(info.grantedTTL) if int(info.TTL) > 0 else 0

    @_mapped(retry=False)
    def lease_revoke(self, lease_id: int) -> bool:
        """Revoke the lease (its keys go with it); False when it no longer existed."""
        try:
            self.raw.revoke_lease(lease_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not raise
            pass


def connect(config: EtcdConfig | str | None = None, **kw: Any) -> Etcd:
    """The one way to get an etcd client. Raises ConfigError on bad config;
    does not contact etcd (the first call does, with the config's timeout)."""
    if not isinstance(config, EtcdConfig):
        config = EtcdConfig.from_urls(config, **kw)
    return Etcd(config)
