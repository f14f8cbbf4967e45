"""Files written whole or not at all."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_json_atomically(path: str, data: Any, durable: bool = False) -> None:
    """Replace path with data as JSON, all or nothing (a temp file, then rename).
    durable: fsync before the rename, for what must survive a crash (agent results)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
