"""Files written whole or not at all."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def stat_stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """A file's stat stamp: (size, mtime, ctime, inode, device), nanoseconds. Equal stamps, taken
    long enough after the last change (each user says how long), mean unchanged content: the
    caches of hashes by stamp (cli/file_hashes.py: the scan cache's and the job inputs', cli/identity_cache.py,
    agent/helper.py) all compare this one."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may write less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
