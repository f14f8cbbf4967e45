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
# The URI of a pool certificate: it may say Hello under any valid agent name
# (replicas of a scaled service, whose names are their host names). It is
# weaker than one certificate per agent: any holder may take any free name;
# a live agent's name is still never taken over.
ANY_AGENT = "*"
# The same identity as a DNS name, which is what a TLS client can check of a
# server's certificate (gRPC verifies a server name, not a URI): the Helper
# service serves compile jobs with the agent's certificate, and the initiator
# asks for agent_server_name(agent) of the agent the grant names. The name is
# hex so that every agent name is one label, and two names that differ only
# in case (DNS names do not) differ; the suffix is reserved (RFC 2606), so
# the host certificates of the same CA never name it. A pool certificate
# carries the wildcard, which matches every agent's.
AGENT_DNS_SUFFIX = ".agents.baton.invalid"
ANY_AGENT_SERVER_NAME = f"*{AGENT_DNS_SUFFIX}"


def agent_server_name(name: str) -> str:
    """The DNS name that identifies agent `name` in its certificate (6131.agents.baton.invalid for a1)."""
    return f"{name.encode().hex()}{AGENT_DNS_SUFFIX}"


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


# Values that example files and tutorials put where a secret goes; a cluster that
# starts with one of them is guarded by a secret everybody knows.
PLACEHOLDERS = frozenset({"changeme", "password", "passw0rd", "admin", "secret", "token", "default",
                          "example", "test", "baton"})


def is_placeholder(value: str) -> bool:
    """True for a known placeholder ("change-me", "password", "admin", "secret", ...),
    ignoring case and punctuation, and for anything that starts with "change me"."""
    plain = re.sub(r"[^a-z0-9]", "", value.lower())
    return plain in PLACEHOLDERS or plain.startswith("changeme")


def read_file_secret(what: str, path: str) -> str:
    """The stripped contents of a secret file; ConfigError if unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path!r}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"the {what} file {path!r} is empty")
    return value


def env_secret(var: str, what: str) -> str | None:
    """A secret from the environment: the file named by ${var}_FILE (the form
    compose and systemd credentials use), else ${var}, else None. ConfigError
    when both are set (which one counts would be a guess) or the file is bad."""
    path = os.environ.get(f"{var}_FILE")
    if path:
        if os.environ.get(var):
            raise ConfigError(f"set {var} or {var}_FILE, not both")
        return read_file_secret(what, path)
    return os.environ.get(var) or None


def read_token(path: str | None) -> str | None:
    """The cluster token shared by agents and coordinators: from the file, else
    $BATON_AGENT_TOKEN_FILE, else $BATON_AGENT_TOKEN, else None. ConfigError if
    the file is unreadable or empty, or the token is a placeholder."""
    token = read_file_secret("agent token", path) if path else env_secret("BATON_AGENT_TOKEN", "agent token")
    if token is not None and is_placeholder(token):
        raise ConfigError("the agent token is a placeholder from an example; set a long random one "
                          "(python3 -c \"import secrets; print(secrets.token_urlsafe(32))\")")
    return token
