"""The compiler's identity kept across builds by its files' stat stamps.

Every job of `baton run` names its compiler by agent.compile_job.compiler_identity:
sha256 over the driver, cc1, cc1plus and as. Computed once per build
(cli/job_server.py `Once`), that hash still cost each build ~50-60 ms of
`baton run`'s CPU for Debian's GCC 12 (~0.6 ms a job of c-ares; on a machine
whose cores the helpers share, taken from the compiles: bench/README.md,
"baton run's own CPU per job"). `compiler_identity(compiler)` finds the
compiler's files as before (agent.compile_job.compiler_programs: the driver
on PATH and the programs it runs) and reuses the identity stored in
$BATON_CACHE_DIR/identity (else ~/.cache/baton/identity) when every file
still has the stat stamp (size, mtime, ctime, inode, device) it had when it
was hashed; else it hashes them again. As in cli/file_hashes.py, a file that
changed within SETTLE_NS of the hashing is not trusted to its stamp (a
timestamp's granularity could hide a second change), and a file that changed
while it was hashed is not stored. Any doubt (unreadable, corrupt or foreign
entry) hashes again: the identity is never one the files do not make.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Callable

from agent.compile_job import compiler_programs, identity_of
from cli import cache_home
from cli.file_hashes import SETTLE_NS
from cluster.files import stat_stamp, write_json_atomically

VERSION = 1
_IDENTITY = re.compile(r"^[0-9a-f]{64}$")


def cache_dir(env: dict | None = None) -> str:
    """$BATON_CACHE_DIR/identity, else $XDG_CACHE_HOME/baton/identity (~/.cache)."""
    return cache_home.cache_dir("identity", env)


def _stamp(path: str) -> list[int]:
    return list(stat_stamp(os.stat(path)))   # a list: as it reads back from the JSON entry


def compiler_identity(compiler: str, directory: str | None = None,
                      clock_ns: Callable[[], int] = time.time_ns) -> str:
    """agent.compile_job.compiler_identity(compiler), from the cache when its files are unchanged."""
    paths = [path for _, path in compiler_programs(compiler)]
    stamps = [_stamp(path) for path in paths]
    entry_path = os.path.join(directory or cache_dir(),
                              hashlib.sha256(json.dumps(paths).encode()).hexdigest() + ".json")
    try:
        with open(entry_path, encoding="utf-8") as f:
            entry = json.load(f)
        if (entry["v"] == VERSION and entry["paths"] == paths and entry["stamps"] == stamps
                and _IDENTITY.match(entry["identity"])):
            return entry["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # As agent.compile_job.compiler_identity: its names are the files' base names.
    identity = identity_of((os.path.basename(path), path) for path in paths)
    try:
        settled = clock_ns() - SETTLE_NS
        if [_stamp(path) for path in paths] == stamps and all(max(s[1], s[2]) < settled for s in stamps):
            os.makedirs(os.path.dirname(entry_path), mode=0o700, exist_ok=True)
            write_json_atomically(entry_path, {"v": VERSION, "paths": paths, "stamps": stamps,
                                               "identity": identity})
    except OSError:
        pass   # not kept: the next build hashes again
    return identity
