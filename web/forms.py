"""Running an action from an HTML form: flash the outcome, redirect back (post/redirect/get)."""
from __future__ import annotations

from typing import Callable

from flask import flash, g, redirect

from lease.errors import NotLeader
from lease.election import Fence
from web import actions, etcd_access
from web.authority import write_fence
from web.guards import authority, may_write, read_only_refusal


def run(action: Callable[[Fence], str], back: str, work: bool = False):
    """Check that this coordinator may make the write (work: builds and
    cancellations, accepted where agents are served; else a change, only on
    the leading primary), run action(fence) -> success sentence, flash it and go back.

    Invalid input is flashed as an error; a lost leadership at commit is the
    same 403 page as a view-only coordinator.
    """
    auth = authority()
    if not may_write(auth, work):
        return read_only_refusal(auth, work)
    try:
        flash(action(write_fence(etcd_access.client(), etcd_access.keys(), auth)), "ok")
    except (actions.Invalid, actions.NotFound) as exc:
        flash(str(exc), "error")
    except NotLeader:
        # The fence refused the commit: leadership moved after the check. Answer
        # with what is true now.
        g.pop("authority", None)
        g.pop("snapshot", None)
        return read_only_refusal(authority(), work)
    return redirect(back)
