"""Users of the web UI and API: scrypt password records in etcd.

A user is `users/<name>` = {"role": "admin"|"viewer", "scrypt": {"n", "r",
"p", "salt", "hash"}} (salt and hash base64). The scrypt parameters travel
with each record, so they can be raised later without invalidating old
passwords (`needs_rehash` says when a record is behind).

Writes are fenced (docs/design.md section 3, rule 2): every function that
changes users takes a lease.election.Fence (the daemon's Election.fence(),
or the web's Fence for the epoch it checked) and commits through it.
Conditions of our own ("the user does not exist yet") ride inside the
fenced ops as a nested transaction, so a failed condition is told apart
from a lost fence: a lost fence raises lease.errors.NotLeader and changes
nothing.

Invalid input raises UserError (a ValueError) with one sentence a user can
act on.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import unicodedata
from typing import Any, Iterator

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cluster.names import NAME_RE, env_secret, is_placeholder
from cluster.keys import Keys, decode, encode
from lease.client import Etcd
from lease.election import Fence
from lease.errors import BatonError

ROLES = ("admin", "viewer")
ADMIN = "admin"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

# scrypt cost: 2**14 * 8 * 128 bytes = 16 MiB and ~50 ms per check.
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Bounds for parameters read back from etcd: a corrupted or hostile record
# must not make a login cost gigabytes of memory.
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
_MAX_P = 16

class UserError(BatonError, ValueError):
    """A user name, role or password is not acceptable, or the change conflicts."""


class UserExists(UserError):
    """add_user: a user of that name exists already."""


class UnknownUser(UserError):
    """delete_user: no user of that name."""


# -- passwords -------------------------------------------------------------------

def _password_bytes(password: str) -> bytes:
    # The same password typed on two keyboards may arrive composed or
    # decomposed; NFC makes them one (as RFC 8265 does for passwords).
    return unicodedata.normalize("NFC", password).encode("utf-8")


def validate_password(password: Any) -> str:
    """Return password if it is acceptable, else raise UserError saying why."""
    if not isinstance(password, str):
        raise UserError("the password must be text")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters long")
    if is_placeholder(password):
        raise UserError("the password is a well-known placeholder (like change-me or password); choose another")
    return password


def admin_password_from_env() -> str | None:
    """The first admin's password the operator gave: the file named by
    BATON_ADMIN_PASSWORD_FILE (compose secrets, systemd credentials), else
    BATON_ADMIN_PASSWORD, else None. lease.errors.ConfigError for a bad file."""
    return env_secret("BATON_ADMIN_PASSWORD", "admin password")


def hash_password(password: str) -> dict:
    """{"n", "r", "p", "salt", "hash"} for password, with a fresh random salt."""
    if not isinstance(password, str):
        raise UserError("the password must be text")
    salt = secrets.token_bytes(SALT_BYTES)
    key = Scrypt(salt=salt, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(
        _password_bytes(password))
    return {"n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode("ascii"),
            "hash": base64.b64encode(key).decode("ascii")}


def _scrypt_params(record: Any) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, hash) from a user record or a bare hash dict; None if malformed."""
    if not isinstance(record, dict):
        return None
    params = record.get("scrypt", record)
    if not isinstance(params, dict):
        return None
    n, r, p = params.get("n"), params.get("r"), params.get("p")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
        return None
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= _MAX_P or 128 * n * r > _MAX_SCRYPT_MEMORY:
        return None
    try:
        salt = base64.b64decode(params.get("salt", ""), validate=True)
        expected = base64.b64decode(params.get("hash", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        return None
    if len(salt) < 8 or not 16 <= len(expected) <= 64:
        return None
    return n, r, p, salt, expected


def verify_password(password: Any, record: Any) -> bool:
    """True when password matches the record (a user record or hash_password's dict).

    The comparison is constant-time. A malformed record or a non-text
    password gives False after the same work as a real check, so timing does
    not tell a broken record (or a missing user, when the caller passes a
    dummy record) from a wrong password.
    """
    params = _scrypt_params(record)
    if params is None or not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        _spend_one_check()
        return False
    n, r, p, salt, expected = params
    try:
        Scrypt(salt=salt, length=len(expected), n=n, r=r, p=p).verify(_password_bytes(password), expected)
    except InvalidKey:
        return False
    return True


def _spend_one_check() -> None:
    Scrypt(salt=b"\0" * SALT_BYTES, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(b"")


def needs_rehash(record: Any) -> bool:
    """True when the record's scrypt parameters are weaker than today's (rehash at next login)."""
    params = _scrypt_params(record)
    if params is None:
        return True
    n, r, p, _, expected = params
    return (n, r, p) < (SCRYPT_N, SCRYPT_R, SCRYPT_P) or len(expected) < KEY_BYTES


# -- names and records -----------------------------------------------------------

def validate_username(name: Any) -> str:
    """Return name if it can be a user name (it becomes an etcd key segment), else raise UserError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UserError(f"user name {name!r} must be 1-63 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    return name


def validate_role(role: Any) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r} must be one of {', '.join(ROLES)}")
    return role


def user_record(role: str, password: str) -> dict:
    """The value stored at users/<name>; validates role and password."""
    return {"role": validate_role(role), "scrypt": hash_password(validate_password(password))}


# -- etcd ------------------------------------------------------------------------

def list_users(etcd: Etcd, keys: Keys) -> list[dict]:
    """[{"name", "role"}] sorted by name; no hashes (safe to show)."""
    users = [{"name": name, "role": role} for name, role, _ in _roles(etcd, keys)]
    return sorted(users, key=lambda u: u["name"])


def _roles(etcd: Etcd, keys: Keys) -> Iterator[tuple[str, str | None, Any]]:
    """(name, role or None for an unreadable record, key metadata) of every user."""
    for raw, meta in etcd.get_prefix(keys.users):
        try:
            record = decode(raw)
        except ValueError:
            record = None
        role = record.get("role") if isinstance(record, dict) else None
        yield Keys.name_of(meta.key, keys.users), role, meta


def get_user(etcd: Etcd, keys: Keys, name: str) -> dict | None:
    """{"name", "role", "scrypt"} or None when there is no such user (or the name is invalid)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return None
    raw, _ = etcd.get(keys.user(name))
    if raw is None:
        return None
    try:
        record = decode(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    return {**record, "name": name}


def _guarded(etcd: Etcd, fence: Fence, compare: list, ops: list) -> bool:
    """Commit ops only if compare holds, inside the fenced transaction; True if they ran."""
    responses = fence.commit([etcd.ops.txn(compare, ops, [])])
    return bool(responses) and bool(responses[0].response_txn.succeeded)


def add_user(etcd: Etcd, keys: Keys, name: str, role: str, password: str, fence: Fence) -> None:
    """Create a user. Raises UserError for a bad name/role/password, UserExists when
    the name is taken (checked in the same transaction), NotLeader when fenced out."""
    key = keys.user(validate_username(name))
    value = encode(user_record(role, password))
    if not _guarded(etcd, fence, [etcd.ops.version(key) == 0], [etcd.ops.put(key, value)]):
        raise UserExists(f"a user named {name} already exists")


def set_password(etcd: Etcd, keys: Keys, name: str, password: str, fence: Fence) -> None:
    """Replace an existing user's password (role unchanged). Raises UnknownUser if absent."""
    key = keys.user(validate_username(name))
    validate_password(password)
    raw, meta = etcd.get(key)
    if raw is None:
        raise UnknownUser(f"there is no user named {name}")
    try:
        role = decode(raw).get("role")
    except (ValueError, AttributeError):
        role = None
    if role not in ROLES:
        raise UserError(f"the record of user {name} is damaged (no valid role); delete and add it again")
    new = {"role": role, "scrypt": hash_password(password)}
    if not _guarded(etcd, fence, [etcd.ops.mod(key) == meta.mod_revision], [etcd.ops.put(key, encode(new))]):
        raise UserError(f"user {name} changed meanwhile; try again")


def delete_user(etcd: Etcd, keys: Keys, name: str, fence: Fence) -> None:
    """Delete a user. Raises UnknownUser if absent, and UserError for the last
    admin (a farm nobody can administer cannot be fixed from the UI)."""
    key = keys.user(validate_username(name))
    admins = {}
    target_meta, target_role = None, None
    for user, role, meta in _roles(etcd, keys):
        if user == name:
            target_meta, target_role = meta, role
        elif role == ADMIN:
            admins[user] = meta
    if target_meta is None:
        raise UnknownUser(f"there is no user named {name}")
    if target_role == ADMIN and not admins:
        raise UserError(f"{name} is the last admin; add another admin before deleting it")
    # The other admins must still be there, unchanged, when the delete applies.
    compare = [etcd.ops.mod(key) == target_meta.mod_revision]
    compare += [etcd.ops.mod(keys.user(u)) == m.mod_revision for u, m in admins.items()]
    if not _guarded(etcd, fence, compare, [etcd.ops.delete(key)]):
        raise UserError(f"users changed while deleting {name}; try again")


def ensure_admin(etcd: Etcd, keys: Keys, fence: Fence, password: str | None = None) -> str | None:
    """When no user exists, create "admin" and return the password it set.

    The password is `password`, else the operator's (admin_password_from_env), else a random one
    the caller logs once. Returns None when any user exists already, also
    when another coordinator created admin at the same moment: the put is
    conditional on users/admin not existing. Raises UserError for a given
    password that is too short, NotLeader when fenced out.
    """
    if etcd.get_prefix(keys.users, keys_only=True):
        return None
    if password is None:
        password = admin_password_from_env() or secrets.token_urlsafe(12)
    key = keys.user(ADMIN)
    value = encode(user_record(ADMIN, password))
    if not _guarded(etcd, fence, [etcd.ops.version(key) == 0], [etcd.ops.put(key, value)]):
        return None
    return password
