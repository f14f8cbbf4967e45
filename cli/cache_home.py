"""Where `baton run` keeps what outlives one build (the scan cache, packed toolchains):
$BATON_CACHE_DIR, else $XDG_CACHE_HOME/baton, else ~/.cache/baton."""
from __future__ import annotations

import os


def cache_dir(kind: str, env: dict | None = None) -> str:
    """The directory of one kind of cache ("scan", "toolchains") under the cache home."""
    env = os.environ if env is None else env
    base = env.get("BATON_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "baton")
    return os.path.join(base, kind)
