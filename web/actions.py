"""The changes a user can make, shared by the JSON API and the HTML forms.

Each function takes the Fence of the epoch that the caller checked
(guards.writable_required, authority.write_fence) and commits through it, so
a leadership change between check and write raises NotLeader instead of
writing. Bad input raises
Invalid with one sentence; nothing is stored then.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from cluster import users as user_store
from cluster.buildfile import BuildFileError, parse_build
from cluster.names import NAME_RE
from cluster.keys import Keys, decode, encode
from cluster.records import BUILD_ENDED, RUN, CoordinatorRecord
from cluster.settings import Settings, validate_update
from lease.election import Fence
from web.authority import Conflict

MAX_SETTINGS_RETRIES = 3


class Invalid(ValueError):
    """The user's input is refused; str(exc) is the sentence to show (400)."""


class NotFound(LookupError):
    """The named thing does not exist (404)."""


class Ended(RuntimeError):
    """The request comes too late: the thing it would change has ended (409)."""


def new_build_id(now: float) -> str:
    return "b-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(3)


def submit_build(etcd, keys: Keys, fence: Fence, body: bytes | str | dict, user: str, now: float) -> str:
    """Store a build (spec and queued status) in one fenced transaction; returns its id."""
    if isinstance(body, (bytes, str)) and not body.strip():
        raise Invalid("the build file is empty")
    try:
        spec = parse_build(body)
    except BuildFileError as exc:
        raise Invalid(str(exc)) from None
    build_id = new_build_id(now)
    # The tasks as the build file gave them, env included: the agent hands it to the task.
    tasks = [t.to_dict() for t in spec.tasks]
    record = {"id": build_id, "name": spec.name, "submitted": now, "user": user, "tasks": tasks}
    if spec.env:
        record["env"] = dict(spec.env)
    status = {"state": "queued", "total": len(tasks), "done": 0, "failed": 0, "running": 0,
              "name": spec.name, "submitted": now, "user": user, "started": None, "finished": None}
    fence.commit([
        etcd.ops.put(keys.build(build_id), encode(record)),
        etcd.ops.put(keys.status_of_build(build_id), encode(status)),
    ], also=[etcd.ops.version(keys.build(build_id)) == 0])
    return build_id


def cancel_build(etcd, keys: Keys, fence: Fence, build_id: str, user: str, now: float) -> bool:
    """Ask the leader to cancel a build: one fenced put of build-cancel/<id>, which the
    runtime acts on (coordinator/runtime/cancelling.py), a later leader too. Returns
    False when a cancellation was already asked for (nothing written).

    Raises NotFound for an unknown build, Ended for one that has ended. A build
    that ends between this check and the leader reading the request stays as it ended.
    """
    spec = etcd.get(keys.build(build_id))[0]
    if spec is None:
        raise NotFound(f"no build {build_id}")
    if (decode(spec) or {}).get("kind") == RUN:   # coordinator/runtime/run_records.py
        raise Invalid(f"build {build_id} is a `baton run` build: it ends with its command; stop that where it runs")
    status = decode(etcd.get(keys.status_of_build(build_id))[0]) or {}
    if status.get("state") in BUILD_ENDED:
        raise Ended(f"build {build_id} has already ended ({status['state']}); there is nothing to cancel")
    if etcd.get(keys.cancel_of_build(build_id))[0] is not None:
        return False
    try:
        fence.commit([etcd.ops.put(keys.cancel_of_build(build_id), encode({"user": user, "time": now}))],
                     also=[etcd.ops.version(keys.cancel_of_build(build_id)) == 0])
    except Conflict:
        return False  # someone else asked at the same moment
    return True


def registered_backups(etcd, keys: Keys, primary: str) -> list[str]:
    out = []
    for raw, meta in etcd.get_prefix(keys.coordinators):
        record = CoordinatorRecord.parse(raw, Keys.name_of(meta.key, keys.coordinators))
        if record is not None and record.role == "backup" and record.primary == primary:
            out.append(record.name)
    return sorted(out)


def update_settings(etcd, keys: Keys, fence: Fence, changes: Any, primary: str) -> Settings:
    """Validate and save a settings change (merged into the current settings).

    selected_backup must be none or a registered backup of this primary;
    keeping the current selection is allowed while that backup is down, so
    saving the other settings never fails because of it.
    """
    try:
        clean = validate_update(changes)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    for _ in range(MAX_SETTINGS_RETRIES):
        raw, meta = etcd.get(keys.settings)
        current = Settings.from_json(raw)
        chosen = clean.get("selected_backup", current.selected_backup)
        if chosen is not None and chosen != current.selected_backup:
            backups = registered_backups(etcd, keys, primary)
            if chosen not in backups:
                offered = ", ".join(backups) if backups else "none are registered"
                raise Invalid(f"{chosen} is not a registered backup of {primary} (registered: {offered})")
        updated = Settings(**dict(current.to_dict(), **clean))
        guard = (etcd.ops.mod(keys.settings) == meta.mod_revision if meta
                 else etcd.ops.version(keys.settings) == 0)
        try:
            fence.commit([etcd.ops.put(keys.settings, updated.to_json())], also=[guard])
            return updated
        except Conflict:
            continue  # the daemon changed settings meanwhile (e.g. a deselection): merge again
    raise Invalid("the settings kept changing while being saved; reload and try again")


def known_agent(etcd, keys: Keys, name: str) -> bool:
    if etcd.get(keys.agent(name))[0] is not None or etcd.get(keys.agent_settings(name))[0] is not None:
        return True
    runtime = decode(etcd.get(keys.runtime)[0]) or {}
    return name in (runtime.get("agents") or {})


def set_agent_config(etcd, keys: Keys, fence: Fence, name: str, changes: Any) -> dict:
    """Merge {disabled?, subscribed?} into agent-config/<name>."""
    if not isinstance(changes, dict) or not changes:
        raise Invalid("send a JSON object with disabled and/or subscribed")
    unknown = sorted(set(changes) - {"disabled", "subscribed"})
    if unknown:
        raise Invalid(f"unknown agent setting(s): {', '.join(unknown)}")
    for key, value in changes.items():
        if not isinstance(value, bool):
            raise Invalid(f"{key} must be true or false")
    if not known_agent(etcd, keys, name):
        raise NotFound(f"no agent named {name}")
    raw, meta = etcd.get(keys.agent_settings(name))
    current = decode(raw) if raw else {}
    # "subscribed" absent means the admin has not decided (auto-subscribe decides).
    config = {k: current[k] for k in ("disabled", "subscribed") if k in (current or {})}
    config.update(changes)
    guard = (etcd.ops.mod(keys.agent_settings(name)) == meta.mod_revision if meta
             else etcd.ops.version(keys.agent_settings(name)) == 0)
    fence.commit([etcd.ops.put(keys.agent_settings(name), encode(config))], also=[guard])
    return config


def create_user(etcd, keys: Keys, fence: Fence, body: Any) -> dict:
    """Add a user (cluster.users checks name, role and password, and that the name is free)."""
    if not isinstance(body, dict):
        raise Invalid("send a JSON object with name, role and password")
    name, role = body.get("name"), body.get("role") or "viewer"
    try:
        user_store.add_user(etcd, keys, name, role, body.get("password"), fence)
    except user_store.UserError as exc:
        raise Invalid(str(exc)) from None
    return {"name": name, "role": role}


def change_password(etcd, keys: Keys, fence: Fence, name: str, body: Any) -> None:
    """Replace a user's password (cluster.users checks it; the role stays)."""
    if not isinstance(body, dict) or not isinstance(body.get("password"), str):
        raise Invalid("send a JSON object with the new password")
    try:
        user_store.set_password(etcd, keys, name, body["password"], fence)
    except user_store.UnknownUser as exc:
        raise NotFound(str(exc)) from None
    except user_store.UserError as exc:
        raise Invalid(str(exc)) from None


def remove_user(etcd, keys: Keys, fence: Fence, name: str) -> None:
    """Delete a user; the last admin is refused (cluster.users.delete_user)."""
    try:
        user_store.delete_user(etcd, keys, name, fence)
    except user_store.UnknownUser as exc:
        raise NotFound(str(exc)) from None
    except user_store.UserError as exc:
        raise Invalid(str(exc)) from None


def request_switchover(etcd, keys: Keys, fence: Fence, me: str, my_primary: str | None,
                       selected_backup: str | None, target: str | None) -> str:
    """Write switchover = {target}; the daemons carry out the planned handover."""
    if target is None:
        # The natural partner: a leading primary hands to its selected backup,
        # a leading backup hands back to its primary.
        target = selected_backup if my_primary == me else my_primary
    if not target:
        raise Invalid("no switchover target: select a backup first or name one with target")
    if not isinstance(target, str) or not NAME_RE.match(target):
        raise Invalid("target must be a coordinator's name")
    if target == me:
        raise Invalid(f"{me} already leads; name another coordinator as target")
    if etcd.get(keys.coordinator(target))[0] is None:
        raise Invalid(f"{target} is not a registered coordinator (it must be running)")
    fence.commit([etcd.ops.put(keys.switchover, encode({"target": target}))])
    return target
