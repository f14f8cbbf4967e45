"""Session: config rules, renewal bookkeeping (pure), and behaviour against a real etcd."""
from __future__ import annotations

import threading
import time

import pytest

from lease.client import connect
from lease.errors import ConfigError, EtcdUnavailable
from lease.session import RenewalClock, Session, validate_timings
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

TTL = 2
RENEW_DEADLINE = TTL * 2 / 3
# Allowance for thread wake-up and a loaded machine on top of a bound that is the spec.
SCHED = 0.3


# -- config (pure) ----------------------------------------------------------------
@pytest.mark.parametrize("ttl, deadline, interval, rule", [
    (1, 0.5, 0.2, "ttl must be a whole number of seconds >= 2"),
    (2.5, 1, 0.5, "ttl must be a whole number"),
    (2, 2, 0.5, "renew_deadline (2) must be less than ttl (2)"),
    (2, 1, 1, "keepalive interval (1) must be less than renew_deadline (1)"),
    (2, 1, 0, "keepalive interval must be > 0"),
    (2, 1, -0.1, "keepalive interval must be > 0"),
])
def test_bad_timings_name_the_broken_rule(ttl, deadline, interval, rule):
    with pytest.raises(ConfigError) as err:
        validate_timings(ttl, deadline, interval)
    assert rule in str(err.value)


def test_session_rejects_bad_timings_before_touching_etcd():
    etcd = connect(f"http://127.0.0.1:{free_port()}", timeout=0.5)  # nothing listens there
    with pytest.raises(ConfigError, match="renew_deadline"):
        Session(etcd, ttl=2, renew_deadline=3)
    with pytest.raises(ConfigError, match="keepalive interval"):
        Session(etcd, ttl=3, renew_deadline=1, keepalive_interval=1.5)
    Session(etcd, ttl=2)  # defaults (1.33, 0.67) are valid; constructing does not connect


def test_coordinator_config_uses_the_same_rule():
    from coordinator.config import Timings

    with pytest.raises(ConfigError, match="renew_deadline"):
        Timings(ttl=2, renew_deadline=2.5)


# -- renewal bookkeeping (pure, fake clock) ----------------------------------------
def test_renewal_call_never_outlives_the_loss_deadline():
    r = RenewalClock(renew_deadline=4.0, keepalive_interval=2.0, last_renewal=100.0, expires_at=106.0)
    assert r.call_timeout(now=101.0, etcd_timeout=2.0) == 2.0    # plenty left: client timeout
    assert r.call_timeout(now=103.5, etcd_timeout=2.0) == pytest.approx(0.5)  # only 0.5 s left
    assert r.next_wake(now=101.0, failing=False) == pytest.approx(1.0)
    assert r.next_wake(now=103.95, failing=True) == pytest.approx(0.05)  # wake at the deadline
    assert not r.overdue(103.99) and r.overdue(104.0)
    r.renewed(sent_at=103.0, ttl=6)
    assert r.expires_at == 109.0 and not r.overdue(106.9)


# -- against a real etcd -------------------------------------------------------------
def test_session_keeps_the_lease_past_its_ttl_and_close_revokes(etcd):
    lost_calls = []
    s = Session(etcd, ttl=TTL, healthy=lambda: True, on_lost=lambda: lost_calls.append(1)).start()
    t0 = time.monotonic()
    assert 0 < s.time_left() <= TTL
    assert s.last_renewal_latency is not None and s.last_renewal_latency > 0
    # Alive well past the point where an unrenewed lease would have expired.
    wait_until(lambda: time.monotonic() - t0 > TTL + 1, timeout=TTL + 5)
    assert etcd.lease_ttl(s.lease_id) > 0
    assert not s.lost.is_set()
    s.close()
    assert etcd.lease_ttl(s.lease_id) == -1
    assert s.lost.is_set() and lost_calls == []  # an owner's close is not a loss
    s.close()  # twice is fine


def test_unhealthy_owner_loses_the_lease_within_renew_deadline(etcd):
    healthy = threading.Event()
    healthy.set()
    lost_at = []
    s = Session(etcd, ttl=TTL, healthy=healthy.is_set,
                on_lost=lambda: lost_at.append((time.monotonic(), s.lost_reason))).start()
    try:
        wait_until(lambda: s.last_renewal_latency is not None, timeout=5)
        wedged_at = time.monotonic()
        healthy.clear()
        assert s.lost.wait(RENEW_DEADLINE + 5)
        at, reason = wait_until(lambda: lost_at, timeout=5)[0]  # on_lost runs just after `lost` is set
        assert at - wedged_at <= RENEW_DEADLINE + SCHED, f"loss reported {at - wedged_at:.2f} s after the wedge"
        assert "unhealthy" in reason
        # The session gives the lease back so a successor need not wait for expiry.
        wait_until(lambda: etcd.lease_ttl(s.lease_id) == -1, timeout=5)
        assert len(lost_at) == 1
    finally:
        s.close()


def test_heartbeats_keep_the_session_and_silence_loses_it(etcd):
    s = Session(etcd, ttl=TTL).start()  # no healthy callable: heartbeats count
    stop = threading.Event()

    def owner_loop():
        while not stop.wait(0.1):
            s.heartbeat()

    t = threading.Thread(target=owner_loop, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        wait_until(lambda: time.monotonic() - t0 > TTL + 0.5, timeout=TTL + 5)
        assert not s.lost.is_set() and etcd.lease_ttl(s.lease_id) > 0
        stop.set()
        silent_at = time.monotonic()
        assert s.lost.wait(2 * RENEW_DEADLINE + 5)
        # Last beat <= silent_at; the owner counts healthy until the beat is renew_deadline old,
        # then renewals stop and loss follows renew_deadline after the last renewal.
        assert time.monotonic() - silent_at <= 2 * RENEW_DEADLINE + SCHED
    finally:
        stop.set()
        s.close()


def test_revoked_lease_is_reported_lost_at_the_next_renewal(etcd):
    reasons = []
    s = Session(etcd, ttl=TTL, healthy=lambda: True, on_lost=lambda: reasons.append(s.lost_reason)).start()
    try:
        etcd.lease_revoke(s.lease_id)
        revoked_at = time.monotonic()
        assert s.lost.wait(5)
        assert time.monotonic() - revoked_at <= s.keepalive_interval + SCHED
        assert wait_until(lambda: reasons, timeout=5) == ["etcd says the lease no longer exists"]
        assert s.time_left() == 0.0
    finally:
        s.close()


def test_unreachable_etcd_at_start_is_one_clear_sentence():
    etcd = connect(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    s = Session(etcd, ttl=TTL)
    with pytest.raises(EtcdUnavailable) as err:
        s.start()
    message = str(err.value)
    assert message.startswith("cannot start a session: no etcd endpoint of http://127.0.0.1:")
    assert "\n" not in message and "Traceback" not in message
    s.close()  # never raises, even though nothing was granted


def test_hung_etcd_cannot_hold_the_session_past_renew_deadline(tmp_path):
    """etcd frozen (SIGSTOP) and a client timeout longer than the ttl: each
    renewal's own deadline still ends at renew_deadline, so loss is on time."""
    from tests.harness.etcd import start_single

    member = start_single(tmp_path)
    etcd = connect(member.client_url, timeout=5.0)
    s = Session(etcd, ttl=TTL, healthy=lambda: True).start()
    try:
        wait_until(lambda: s.time_left() > 0, timeout=5)
        member.pause()
        frozen_at = time.monotonic()
        assert s.lost.wait(RENEW_DEADLINE + 10)
        assert time.monotonic() - frozen_at <= RENEW_DEADLINE + SCHED
        assert "renewals failing" in s.lost_reason
    finally:
        member.resume()
        s.close()
        etcd.close()
        member.stop()


def test_revoking_a_lease_ends_its_keys_and_a_second_revoke_says_it_was_gone(etcd, keys):
    # What the next leader does to a crashed leader's lease (coordinator.leadership.revoke).
    lease = etcd.lease_grant(30)
    etcd.put(keys.leader, b"{}", lease=lease)
    assert etcd.lease_revoke(lease) is True
    assert etcd.get(keys.leader)[0] is None
    assert etcd.lease_revoke(lease) is False
