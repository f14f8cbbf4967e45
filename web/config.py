"""The web app's configuration: one dict, from the environment or a test.

Keys (all optional in tests except BATON_ETCD and BATON_NAME):

  BATON_ETCD            etcd URLs, comma separated
  BATON_ETCD_CA/CERT/KEY  TLS files for etcd
  BATON_CLUSTER         cluster name (default "default")
  BATON_NAME            this coordinator's name
  BATON_ROLE            "primary" or "backup"
  BATON_PRIMARY         a backup's primary (else read from coordinators/<name>)
  BATON_DAEMON_STATE    path of the daemon state file (cluster/daemon_state.py)
  BATON_RENEW_DEADLINE  max age in seconds of that file before it counts as stale
  BATON_LIVENESS_MAX_AGE  max age of that file before /livez says the HA loop is stuck
                        (default 30 s: longer than any etcd timeout a cycle waits out)
  BATON_HTTPS           "1" when gunicorn serves HTTPS (cookies get the Secure flag)
  SECRET_KEY            signs the session cookie; shared by all gunicorn workers
  SESSION_IDLE_TIMEOUT  seconds of inactivity before a session ends (2700)
  BATON_CLOCK           callable returning unix time (tests inject one)
  BATON_LOGIN_MAX_FAILURES / BATON_LOGIN_LOCKOUT  throttling (5 failures -> 60 s)
  BATON_LOGIN_MAX_FAILURES_PER_ADDRESS  failures from one address, any names (20)
"""
from __future__ import annotations

import os
import secrets
import time
from typing import Any, Mapping

from lease.errors import ConfigError

ENV_KEYS = ("BATON_ETCD", "BATON_ETCD_CA", "BATON_ETCD_CERT", "BATON_ETCD_KEY", "BATON_CLUSTER",
            "BATON_NAME", "BATON_ROLE", "BATON_PRIMARY", "BATON_DAEMON_STATE",
            "BATON_RENEW_DEADLINE", "BATON_LIVENESS_MAX_AGE", "BATON_HTTPS", "SECRET_KEY", "SESSION_IDLE_TIMEOUT")

DEFAULTS: dict[str, Any] = {
    "BATON_ETCD": "http://127.0.0.1:2379",
    "BATON_CLUSTER": "default",
    "BATON_ROLE": "primary",
    "BATON_PRIMARY": None,
    "BATON_DAEMON_STATE": None,
    "BATON_RENEW_DEADLINE": 6.7,
    "BATON_LIVENESS_MAX_AGE": 30.0,
    "BATON_HTTPS": False,
    "SESSION_IDLE_TIMEOUT": 45 * 60,
    "BATON_LOGIN_MAX_FAILURES": 5,
    "BATON_LOGIN_LOCKOUT": 60.0,
    "BATON_LOGIN_MAX_FAILURES_PER_ADDRESS": 20,
    "BATON_ETCD_TIMEOUT": 2.0,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
}


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config a gunicorn worker builds from the environment the daemon passed."""
    environ = os.environ if environ is None else environ
    out = {k: environ[k] for k in ENV_KEYS if environ.get(k)}
    if "SECRET_KEY" not in out:
        # Workers would each pick a different key and reject each other's
        # cookies; the daemon always passes one, so this is a manual run.
        out["SECRET_KEY"] = secrets.token_hex(32)
    return out


def normalise(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in and types checked; raises ConfigError with a sentence."""
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    if not cfg.get("BATON_NAME"):
        raise ConfigError("the web app needs BATON_NAME (this coordinator's name)")
    if cfg["BATON_ROLE"] not in ("primary", "backup"):
        raise ConfigError(f"BATON_ROLE must be 'primary' or 'backup', got {cfg['BATON_ROLE']!r}")
    if not cfg.get("SECRET_KEY"):
        raise ConfigError("the web app needs SECRET_KEY (shared by all its workers)")
    try:
        cfg["BATON_RENEW_DEADLINE"] = float(cfg["BATON_RENEW_DEADLINE"])
        cfg["SESSION_IDLE_TIMEOUT"] = float(cfg["SESSION_IDLE_TIMEOUT"])
        cfg["BATON_LIVENESS_MAX_AGE"] = float(cfg["BATON_LIVENESS_MAX_AGE"])
    except (TypeError, ValueError):
        raise ConfigError("BATON_RENEW_DEADLINE, BATON_LIVENESS_MAX_AGE and SESSION_IDLE_TIMEOUT must be "
                          "numbers of seconds") from None
    https = cfg.get("BATON_HTTPS")
    cfg["BATON_HTTPS"] = https is True or str(https).lower() in ("1", "true", "yes")
    if cfg["BATON_ROLE"] == "primary":
        cfg["BATON_PRIMARY"] = cfg["BATON_NAME"]
    cfg.setdefault("BATON_CLOCK", time.time)
    if cfg.get("BATON_CLOCK") is None:
        cfg["BATON_CLOCK"] = time.time
    return cfg
