"""etcd primitives that know nothing of builds: client, Session, Election, Watcher."""
from lease.client import Etcd, EtcdConfig, connect
from lease.election import Election, Fence, LeaderInfo, TxnConflict
from lease.errors import (BatonError, ConfigError, EtcdAuthError, EtcdError, EtcdUnavailable, LeaseLost,
                          NotLeader)
from lease.session import Session, validate_timings
from lease.watcher import KV, WatchEvent, Watcher

__all__ = [
    "Etcd", "EtcdConfig", "connect", "Election", "Fence", "LeaderInfo", "TxnConflict",
    "BatonError", "ConfigError", "EtcdAuthError", "EtcdError", "EtcdUnavailable", "LeaseLost",
    "NotLeader", "Session", "validate_timings", "KV", "WatchEvent", "Watcher",
]
