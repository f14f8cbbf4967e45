"""Names and the cluster token: what every process checks the same way.

Names become etcd key segments and appear in URLs, so they are kept plain.
"""
from __future__ import annotations

import os
import re

from lease.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# An agent's client certificate names it with the SubjectAltName URI
# urn:baton:agent:<name> (cli/certs.py issues them; docs/design.md section 9).
AGENT_URI_PREFIX = "urn:baton:agent:"


def check_name(kind: str, name: str) -> str:
    """The name if it is 1-63 letters, digits, '.', '_' or '-' (not starting with
    a punctuation mark); ConfigError naming `kind` otherwise."""
    if not name or not NAME_RE.match(name):
        # Never echo a large input: the message goes back over gRPC and into logs.
        shown = repr(name) if len(name) <= 80 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ConfigError(f"{kind} name {shown} must be 1-63 letters, digits, '.', '_' or '-'")
    return name


def is_name(name: str) -> bool:
    """Whether name follows check_name's rules (for names read from etcd, which are skipped, not refused)."""
    return bool(name) and NAME_RE.match(name) is not None


def check_hostport(what: str, value: str) -> str:
    """The value if it is HOST:PORT with a port in 1-65535; ConfigError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {value!r} must be HOST:PORT")
    return value


def read_token(path: str | None) -> str | None:
    """The cluster token shared by agents and coordinators: from the file, else
    $BATON_AGENT_TOKEN, else None. ConfigError if the file is unreadable or empty."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the agent token file {path!r}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"the agent token file {path!r} is empty")
        return token
    return os.environ.get("BATON_AGENT_TOKEN") or None
