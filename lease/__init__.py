"""etcd primitives that know nothing of builds: client, Session, Election, Watcher.

The names below are imported when first used (PEP 562), not with the package:
`lease.errors` is imported by every `baton` command, and the client's etcd3 and
grpc cost ~100 ms that `baton run` would pay before anything else could start
(its compilers' facts are looked up meanwhile: cli/compiler_facts.py).
"""
from __future__ import annotations

import importlib

_WHERE = {
    "Etcd": "lease.client", "EtcdConfig": "lease.client", "connect": "lease.client",
    "Election": "lease.election", "Fence": "lease.election", "LeaderInfo": "lease.election",
    "TxnConflict": "lease.election",
    "BatonError": "lease.errors", "ConfigError": "lease.errors", "EtcdAuthError": "lease.errors",
    "EtcdError": "lease.errors", "EtcdUnavailable": "lease.errors", "LeaseLost": "lease.errors",
    "NotLeader": "lease.errors",
    "Session": "lease.session", "validate_timings": "lease.session",
    "KV": "lease.watcher", "WatchEvent": "lease.watcher", "Watcher": "lease.watcher",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lease' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
