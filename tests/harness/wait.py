"""Deadline-bound polling: the only way tests wait for something to happen."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str | None = None) -> T:
    """Poll predicate until it returns something truthy; return that value.

    Exceptions raised by predicate count as "not yet" (the last one is shown
    if the deadline passes), so a predicate may talk to a service that is
    still starting.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def holds_for(predicate: Callable[[], object], duration: float, interval: float = 0.05,
              message: str | None = None) -> None:
    """Assert that predicate stays truthy for the whole of duration (for "nothing happens" checks:
    an unselected backup must not take over during several ttls)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            what = message or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"{what} stopped holding")
        time.sleep(interval)
