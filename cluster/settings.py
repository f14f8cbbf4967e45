"""The cluster settings (Settings › General), stored as one etcd key.

The leading primary is the only writer (a fenced txn); everyone reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from cluster.keys import Keys, decode, encode

_FIELDS = ("selected_backup", "auto_subscribe", "max_cores_per_build", "deselect_after", "failback_delay")


@dataclasses.dataclass(frozen=True)
class Settings:
    selected_backup: str | None = None
    auto_subscribe: bool = True
    max_cores_per_build: int = 0  # 0 means no limit
    deselect_after: float = 3600.0
    failback_delay: float | None = None  # None: each backup's own --failback-delay

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "Settings":
        data = decode(raw) or {}
        return cls(**{k: data[k] for k in _FIELDS if k in data})

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
        elif key == "auto_subscribe":
            if not isinstance(value, bool):
                raise ValueError("auto_subscribe must be true or false")
        elif key == "max_cores_per_build":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("max_cores_per_build must be a whole number >= 0 (0 = no limit)")
        elif key == "failback_delay" and value is None:
            pass  # back to each backup's own --failback-delay
        elif key in ("deselect_after", "failback_delay"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a number of seconds >= 0")
            if key == "deselect_after" and value < 1:
                raise ValueError("deselect_after must be at least 1 second")
            value = float(value)
        out[key] = value
    return out


def read_settings(etcd, keys: Keys) -> tuple[Settings, int]:
    """The settings and the key's mod revision (0 when never saved)."""
    raw, meta = etcd.get(keys.settings)
    return Settings.from_json(raw), (meta.mod_revision if meta else 0)
