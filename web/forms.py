"""Running an action from an HTML form: flash the outcome, redirect back (post/redirect/get)."""
from __future__ import annotations

from typing import Callable

from flask import flash, g, redirect

from lease.errors import NotLeader
from web import actions
from web.guards import authority, read_only_refusal


def run(action: Callable[[int], str], back: str):
    """Check writability, run action(epoch) -> success sentence, flash it and go back.

    Invalid input is flashed as an error; a lost leadership at commit is the
    same 403 page as a view-only coordinator.
    """
    auth = authority()
    if not auth.writable:
        return read_only_refusal(auth)
    try:
        flash(action(auth.epoch), "ok")
    except (actions.Invalid, actions.NotFound) as exc:
        flash(str(exc), "error")
    except NotLeader:
        # The fence refused the commit: leadership moved after the check. Answer
        # with what is true now.
        g.pop("authority", None)
        g.pop("snapshot", None)
        return read_only_refusal(authority())
    return redirect(back)
