"""The environment the user started `baton` with, before Python's C locale coercion.

When LC_ALL is unset and the LC_CTYPE locale is C or POSIX (no locale set at
all, say), CPython sets LC_CTYPE to C.UTF-8, C.utf8 or UTF-8 in its own
environment as it starts (PEP 538), and every child would inherit it: under
`baton run` a compiler would then quote ‘x’ where it quotes 'x' under plain
`make`, and a helper would be sent a locale the user never set. Python does
not say whether it coerced; /proc/self/environ does, since it holds the
environment as the process was exec'd (setenv does not change it): LC_CTYPE
is put back as it was there. Standard library only (`baton cc` runs without
site-packages); without /proc the environment is taken as it is.
"""
from __future__ import annotations

import os
from typing import Mapping

# The locales CPython coerces to (Python/pylifecycle.c, _TARGET_LOCALES).
COERCED = ("C.UTF-8", "C.utf8", "UTF-8")
_ABSENT = object()


def started_value(name: str, environ_file: str = "/proc/self/environ"):
    """`name`'s value in the environment this process was exec'd with; None when it had
    none; _ABSENT when that cannot be read (no /proc)."""
    try:
        with open(environ_file, "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return _ABSENT
    prefix = os.fsencode(name) + b"="
    for entry in entries:
        if entry.startswith(prefix):
            return os.fsdecode(entry[len(prefix):])
    return None


def user_environ(environ: Mapping[str, str] | None = None,
                 environ_file: str = "/proc/self/environ") -> dict[str, str]:
    """`environ` (default os.environ) with LC_CTYPE as the user gave it, if Python coerced it."""
    env = dict(os.environ if environ is None else environ)
    if env.get("LC_CTYPE") not in COERCED or env.get("LC_ALL"):
        return env   # not a value coercion sets, or LC_ALL set (then Python does not coerce)
    started = started_value("LC_CTYPE", environ_file)
    if started is None:
        del env["LC_CTYPE"]
    elif started is not _ABSENT:
        env["LC_CTYPE"] = started
    return env
