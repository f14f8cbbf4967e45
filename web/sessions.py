"""UI sessions the server can end: a record in etcd per login.

The signed cookie alone cannot be revoked: a copy of it would work until it
expires. So a login also writes web-sessions/<user>/<id> (cluster.keys),
and the cookie carries the id; every request checks that the record is
still there and was made with the user's current password. That ends a
session

- at logout (the record is deleted, on whichever coordinator),
- when the user's password changes (the record's password stamp no longer
  matches the user record, however the password was changed),
- when the user is deleted (no user record; a user re-created under the
  same name has a new salt, so the stamp does not match either).

The record's lease is the session's longest life (the cookie's lifetime);
an active session renews it now and then. Like the login throttle's keys,
these are written without a fence by any coordinator: they are not cluster
state, and logging out must work on a backup too.
"""
from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any

from cluster.keys import Keys, decode, encode

ID_BYTES = 24


def password_stamp(record: dict) -> str:
    """A short digest of the user's password hash: it changes with every new password."""
    scrypt = record.get("scrypt") if isinstance(record, dict) else None
    material = f"{(scrypt or {}).get('salt')}:{(scrypt or {}).get('hash')}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def open_session(etcd, keys: Keys, user: str, record: dict, coordinator: str, now: float, lifetime: float) -> str:
    """Write a new session record; returns its id (for the cookie)."""
    session_id = secrets.token_urlsafe(ID_BYTES)
    lease = etcd.lease_grant(int(math.ceil(lifetime)))
    etcd.put(keys.web_session(user, session_id),
             encode({"coordinator": coordinator, "created": now, "password": password_stamp(record)}), lease=lease)
    return session_id


def session_valid(etcd, keys: Keys, user: str, session_id: Any, record: dict | None) -> tuple[bool, Any]:
    """(valid, the record's metadata or None). Invalid: no id, no record, the user
    gone or its password changed since the login."""
    if not isinstance(session_id, str) or not session_id or "/" in session_id:
        return False, None
    raw, meta = etcd.get(keys.web_session(user, session_id))
    if raw is None or record is None:
        return False, meta
    try:
        stored = decode(raw)
    except ValueError:
        return False, meta
    return isinstance(stored, dict) and stored.get("password") == password_stamp(record), meta


def renew(etcd, meta: Any) -> None:
    """Keep an active session's record alive for another lifetime."""
    if meta is not None and getattr(meta, "lease_id", 0):
        etcd.lease_keepalive(meta.lease_id)


def close_session(etcd, keys: Keys, user: Any, session_id: Any) -> None:
    """Delete the session's record (logout, or a session found invalid)."""
    if isinstance(user, str) and user and isinstance(session_id, str) and session_id and "/" not in session_id:
        etcd.delete(keys.web_session(user, session_id))
