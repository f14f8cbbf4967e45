"""Directories that build tasks can reach."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path


def reachable_dir(test_name: str) -> Path:
    """A new directory like /tmp (mode 1777): a root agent runs tasks as nobody
    (agent/sandbox.py), who cannot enter pytest's own tmp_path (under a 0700
    /tmp/pytest-of-root). Cluster directories made in it are 0700 themselves."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", test_name)[:40]
    path = Path(tempfile.mkdtemp(prefix=f"baton-test-{name}-"))
    path.chmod(0o1777)
    return path
