"""The cluster settings (Settings › General), stored as one etcd key.

The leading primary is the only writer (a fenced txn); everyone reads.
Every number is finite and in range, whether a user sends it
(validate_update) or it is read back (from_json): a NaN failback_delay
would stop every handback, and a stored NaN makes /api/v1/status invalid
JSON.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from cluster.keys import Keys, decode, encode

_FIELDS = ("selected_backup", "auto_subscribe", "max_cores_per_build", "deselect_after", "failback_delay",
           "crash_detection")
MAX_SECONDS = 365 * 24 * 3600  # a year: longer is a mistake, not a setting
MAX_CORES = 1_000_000
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    selected_backup: str | None = None
    auto_subscribe: bool = True
    max_cores_per_build: int = 0  # 0 means no limit
    deselect_after: float = 3600.0
    failback_delay: float | None = None  # None: each backup's own --failback-delay
    # The next leader revokes a crashed leader's lease instead of waiting for it to expire
    # (coordinator/leader_probe.py, docs/design.md section 1, "Crash detection").
    crash_detection: bool = True

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "Settings":
        data = decode(raw) or {}
        if not isinstance(data, dict):
            log.warning("stored settings are not a JSON object; using the defaults")
            return cls()
        values: dict[str, Any] = {}
        for key in _FIELDS:
            if key in data:
                try:
                    values.update(validate_update({key: data[key]}))
                except ValueError as exc:
                    # Written by an older version or by hand: the default is safer than the value.
                    log.warning("stored setting ignored, using its default: %s", exc)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return encode(self.to_dict())

    def updated(self, changes: dict[str, Any]) -> "Settings":
        return dataclasses.replace(self, **validate_update(changes))


def validate_update(changes: Any) -> dict[str, Any]:
    """Check a settings change from a user; raise ValueError with one sentence."""
    if not isinstance(changes, dict):
        raise ValueError("settings must be a JSON object")
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "selected_backup":
            if value in (None, "", "none"):
                value = None
            elif not isinstance(value, str):
                raise ValueError("selected_backup must be a backup's name or null")
        elif key in ("auto_subscribe", "crash_detection"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
        elif key == "max_cores_per_build":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CORES:
                raise ValueError(f"max_cores_per_build must be a whole number from 0 to {MAX_CORES} "
                                 "(0 = no limit)")
        elif key == "failback_delay" and value is None:
            pass  # back to each backup's own --failback-delay
        elif key in ("deselect_after", "failback_delay"):
            if not _seconds_in_range(value):
                raise ValueError(f"{key} must be a number of seconds from 0 to {MAX_SECONDS} (a year)")
            if key == "deselect_after" and value < 1:
                raise ValueError("deselect_after must be at least 1 second")
            value = float(value)
        out[key] = value
    return out


def _seconds_in_range(value: Any) -> bool:
    """A real number (no bool, no NaN or infinity) from 0 to MAX_SECONDS."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value <= MAX_SECONDS  # False for NaN too: every comparison with NaN is


def read_settings(etcd, keys: Keys) -> tuple[Settings, int]:
    """The settings and the key's mod revision (0 when never saved)."""
    raw, meta = etcd.get(keys.settings)
    return Settings.from_json(raw), (meta.mod_revision if meta else 0)


def seed_settings(etcd, keys: Keys, fence, changes: dict[str, Any]) -> bool:
    """First-start settings: store the defaults with `changes` applied, only if
    the settings key does not exist yet (one fenced transaction that compares
    the key's version with 0). True if they were stored. Once anyone has saved
    settings, or a backup was deselected, the key exists and nothing changes:
    a first-start value never overrides a later choice. ValueError for bad
    changes, lease.errors.NotLeader when fenced out."""
    value = Settings().updated(changes).to_json()
    txn = etcd.ops.txn([etcd.ops.version(keys.settings) == 0], [etcd.ops.put(keys.settings, value)], [])
    responses = fence.commit([txn])
    return bool(responses) and bool(responses[0].response_txn.succeeded)
