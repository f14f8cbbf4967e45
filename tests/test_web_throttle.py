"""Login throttling is shared by every gunicorn worker of a coordinator (a file under flock)."""
import multiprocessing

from web.security import LoginThrottle


def _fail_once(path, user, address):
    LoginThrottle(5, 60.0, lambda: 1000.0, path).failed(user, address)


def test_failures_in_several_workers_add_up(tmp_path):
    path = str(tmp_path / "p1.login-failures.json")
    clock = lambda: 1000.0  # noqa: E731
    # Failures counted by four other processes (as gunicorn workers would be) ...
    ctx = multiprocessing.get_context("fork")
    for _ in range(4):
        p = ctx.Process(target=_fail_once, args=(path, "admin", "10.0.0.9"))
        p.start()
        p.join(10)
        assert p.exitcode == 0
    here = LoginThrottle(5, 60.0, clock, path)
    assert here.seconds_locked("admin", "10.0.0.9") == 0
    # ... and the fifth in this one locks the pair out for everyone.
    here.failed("admin", "10.0.0.9")
    assert here.seconds_locked("admin", "10.0.0.9") == 60.0
    assert LoginThrottle(5, 60.0, clock, path).seconds_locked("admin", "10.0.0.9") == 60.0
    assert here.seconds_locked("admin", "10.0.0.10") == 0


def test_lockout_ends_and_success_resets(tmp_path):
    now = {"t": 0.0}
    throttle = LoginThrottle(3, 10.0, lambda: now["t"], str(tmp_path / "f.json"))
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
