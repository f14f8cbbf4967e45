"""A Session owns one etcd lease and keeps it alive while its owner is healthy.

The keep-alive runs in the session's own thread, but it renews only while the
owner says it is healthy (a `healthy` callable, or `heartbeat()` ticks younger
than renew_deadline), so a wedged owner loses its lease like a dead one
(docs/design.md section 3, rule 6).

Loss is reported (the `lost` Event, then `on_lost()` once; `lost_reason`
says why) as soon as either renewals have failed for renew_deadline, or etcd
says the lease is gone. Because renew_deadline < ttl, the owner learns of the
loss before the lease can expire on the server, and must stop acting then
(rule 3).

Every renewal has a deadline no longer than what is left before
renew_deadline, so a hung etcd cannot hold the thread past it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import grpc
from etcd3 import etcdrpc

from lease.client import Etcd, map_error
from lease.errors import ConfigError, EtcdError, EtcdUnavailable

log = logging.getLogger(__name__)

# Smallest deadline given to one renewal: below this a call cannot succeed anyway.
_MIN_CALL_TIMEOUT = 0.05
# Pause between renewal attempts after a failure (bounded by the time left).
_RETRY_PAUSE = 0.1


def validate_timings(ttl: float, renew_deadline: float, keepalive_interval: float) -> None:
    """Raise ConfigError unless ttl >= 2 and ttl > renew_deadline > keepalive_interval > 0.

    The message names the rule that broke, for the user to fix their config.
    """
    if ttl != int(ttl) or ttl < 2:
        raise ConfigError(f"ttl must be a whole number of seconds >= 2 (etcd's smallest lease), got {ttl}")
    if not renew_deadline < ttl:
        raise ConfigError(f"renew_deadline ({renew_deadline}) must be less than ttl ({ttl})")
    if not keepalive_interval < renew_deadline:
        raise ConfigError(
            f"keepalive interval ({keepalive_interval}) must be less than renew_deadline ({renew_deadline})")
    if not keepalive_interval > 0:
        raise ConfigError(f"keepalive interval must be > 0, got {keepalive_interval}")


def with_require_leader(call_kwargs: dict) -> dict:
    """Call kwargs that make etcd refuse the call when its member has no leader,
    so a member cut off from quorum fails fast instead of answering stale."""
    kwargs = dict(call_kwargs)
    kwargs["metadata"] = tuple(kwargs.get("metadata") or ()) + (("hasleader", "true"),)
    return kwargs


def usable_channel(etcd: Etcd) -> grpc.Channel:
    """A channel for our own raw calls. When every endpoint is marked failed
    (the client waits retry_after before trying one again), use the one in
    use anyway: with a single endpoint, waiting out retry_after after one
    transient error could cost the session its renew_deadline."""
    try:
        return etcd.channel()
    except EtcdUnavailable:
        endpoint = etcd.raw.endpoint_in_use
        if endpoint is None:
            raise
        return endpoint.channel


def fail_over(etcd: Etcd) -> None:
    """After an endpoint failed us: move to another one, if there is another."""
    if len(etcd.config.endpoints) > 1:
        etcd.mark_failed()


@dataclass
class RenewalClock:
    """The session's bookkeeping, pure so it can be tested with a fake clock.

    All times are readings of the session's clock.
    """

    renew_deadline: float
    keepalive_interval: float
    last_renewal: float      # when the last successful renewal was *sent*
    expires_at: float        # last_renewal + the TTL etcd granted

    def overdue(self, now: float) -> bool:
        """True once renewals have failed (or been withheld) for renew_deadline."""
        return now - self.last_renewal >= self.renew_deadline

    def renewal_due(self, now: float) -> bool:
        return now - self.last_renewal >= self.keepalive_interval

    def call_timeout(self, now: float, etcd_timeout: float) -> float:
        """Deadline for one renewal: never past the moment we would declare loss."""
        left = self.renew_deadline - (now - self.last_renewal)
        return max(_MIN_CALL_TIMEOUT, min(etcd_timeout, left))

    def renewed(self, sent_at: float, ttl: int) -> None:
        # Measured from when the request was sent: etcd reset the TTL no earlier.
        self.last_renewal = sent_at
        self.expires_at = sent_at + ttl

    def next_wake(self, now: float, failing: bool) -> float:
        """Seconds to sleep: until the next renewal (sooner while failing),
        but never past the loss deadline."""
        until_deadline = self.renew_deadline - (now - self.last_renewal)
        if failing:
            until_next = _RETRY_PAUSE
        else:
            until_next = self.keepalive_interval - (now - self.last_renewal)
        return max(0.0, min(until_next, until_deadline))


class Session:
    """One lease, kept alive every keepalive_interval while the owner is healthy.

    Use: `with Session(etcd, ttl=10) as s: ... s.heartbeat() ...`. Invalid
    timings raise ConfigError naming the broken rule. `start()` raises
    EtcdUnavailable if the lease cannot be granted within the client timeout.
    After loss the session is finished: make a new one to campaign again.
    """

    def __init__(self, etcd: Etcd, ttl: int = 10, renew_deadline: float | None = None,
                 keepalive_interval: float | None = None,
                 healthy: Callable[[], bool] | None = None,
                 on_lost: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if renew_deadline is None:
            renew_deadline = ttl * 2 / 3
        if keepalive_interval is None:
            keepalive_interval = ttl / 3
        validate_timings(ttl, renew_deadline, keepalive_interval)
        self.etcd = etcd
        self.ttl = int(ttl)
        self.renew_deadline = float(renew_deadline)
        self.keepalive_interval = float(keepalive_interval)
        self._healthy = healthy
        self._on_lost = on_lost
        self._clock = clock
        self.lease_id: int | None = None
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.last_renewal_latency: float | None = None
        self._last_heartbeat = clock()
        self._renewal: RenewalClock | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost_once = threading.Lock()

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> "Session":
        """Grant the lease and start keeping it alive. Raises EtcdUnavailable
        (one sentence) when etcd does not answer within the client timeout."""
        if self._thread is not None:
            raise RuntimeError("session already started")
        sent = self._clock()
        try:
            self.lease_id = self.etcd.lease_grant(self.ttl)
        except EtcdError as exc:
            # etcd without quorum answers "context deadline exceeded" as UNKNOWN: same thing to a user.
            if not isinstance(exc, EtcdUnavailable) and "deadline exceeded" not in str(exc):
                raise
            raise EtcdUnavailable(
                f"cannot start a session: no etcd endpoint of {', '.join(self.etcd.config.endpoints)} "
                f"answered within {self.etcd.config.timeout} s") from exc
        self.last_renewal_latency = self._clock() - sent
        self._last_heartbeat = self._clock()
        self._renewal = RenewalClock(self.renew_deadline, self.keepalive_interval, sent, sent + self.ttl)
        self._thread = threading.Thread(target=self._run, name=f"lease-session-{self.lease_id:x}",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop keeping the lease alive and revoke it (best effort). Never raises.

        Sets `lost` (the session may no longer be relied on) but does not call
        on_lost: that callback is for losses the owner did not ask for.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.etcd.config.timeout + 1)
        already_lost = self.lost.is_set()
        if self.lost_reason is None:
            self.lost_reason = "closed"
        self.lost.set()
        if self.lease_id is not None and not already_lost:
            self._revoke()

    def __enter__(self) -> "Session":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- owner's view ------------------------------------------------------------
    def heartbeat(self) -> None:
        """The owner's tick: 'my loop is still turning'. Only consulted when no
        `healthy` callable was given."""
        self._last_heartbeat = self._clock()

    def owner_healthy(self) -> bool:
        if self._healthy is not None:
            try:
                return bool(self._healthy())
            except Exception:  # noqa: BLE001 - a failing health check means unhealthy
                log.exception("session health check raised; treating the owner as unhealthy")
                return False
        return self._clock() - self._last_heartbeat < self.renew_deadline

    def time_left(self) -> float:
        """Seconds until the lease could expire on the server, by our last
        successful renewal (0 once lost or before start)."""
        if self._renewal is None or self.lost.is_set():
            return 0.0
        return max(0.0, self._renewal.expires_at - self._clock())

    # -- keep-alive thread ---------------------------------------------------------
    def _run(self) -> None:
        try:
            self._keep_alive()
        except BaseException as exc:  # never die silently: the owner must hear of it
            self._report_lost(f"keep-alive thread failed: {exc!r}")
            raise

    def _keep_alive(self) -> None:
        assert self._renewal is not None
        renewal = self._renewal
        failing = False
        withheld = False  # renewal due but the owner is unhealthy: poll its health
        while not self._stop.is_set():
            now = self._clock()
            if renewal.overdue(now):
                why = "owner unhealthy" if withheld else "renewals failing"
                self._report_lost(f"lease not renewed for {self.renew_deadline:g} s ({why})")
                self._revoke()  # lets a successor in sooner when etcd is reachable
                return
            if renewal.renewal_due(now) or failing:
                if not self.owner_healthy():
                    if not withheld:
                        log.warning("session %x: owner unhealthy, withholding lease renewal", self.lease_id)
                    withheld, failing = True, False
                else:
                    withheld = False
                    try:
                        ttl = self._keepalive_once(renewal.call_timeout(now, self.etcd.config.timeout))
                    except Exception as exc:  # noqa: BLE001 - any failure: retry until the deadline
                        if not failing:
                            log.warning("session %x: renewal failed: %s", self.lease_id, exc)
                        failing = True
                    else:
                        failing = False
                        if ttl <= 0:
                            self._report_lost("etcd says the lease no longer exists")
                            return
                        renewal.renewed(now, ttl)
            self._stop.wait(renewal.next_wake(self._clock(), failing or withheld))

    def _keepalive_once(self, timeout: float) -> int:
        """One LeaseKeepAlive round trip with our own deadline; returns the TTL
        granted (<= 0: lease gone). Raises EtcdError; fails the endpoint over
        when it is unreachable."""
        sent = self._clock()
        try:
            stub = etcdrpc.LeaseStub(usable_channel(self.etcd))
            responses = stub.LeaseKeepAlive(
                iter([etcdrpc.LeaseKeepAliveRequest(ID=self.lease_id)]), timeout,
                **with_require_leader(self.etcd.call_kwargs))
            ttl = 0
            for response in responses:
                ttl = int(response.TTL)
                break
            responses.cancel()
        except grpc.RpcError as exc:
            err = map_error(exc)
            if isinstance(err, EtcdUnavailable):
                fail_over(self.etcd)
            raise err from exc
        self.last_renewal_latency = self._clock() - sent
        return ttl

    def _report_lost(self, reason: str) -> None:
        with self._lost_once:
            if self.lost.is_set():
                return
            self.lost_reason = reason
            self.lost.set()
        log.error("session %x lost: %s", self.lease_id or 0, reason)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:  # noqa: BLE001 - the owner's callback must not kill the thread silently
                log.exception("session on_lost callback raised")

    def _revoke(self) -> None:
        try:
            self.etcd.lease_revoke(self.lease_id)
        except Exception as exc:  # noqa: BLE001 - best effort; the lease expires anyway
            log.info("session %x: revoke failed (%s); it will expire on its own", self.lease_id or 0, exc)
