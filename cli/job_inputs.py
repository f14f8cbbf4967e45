"""The initiator's half of the helpers' input stores (agent/input_store.py).

A job names each file it reads by (path, sha256, size) and carries the
content only of those its helper was not sent before: `Delivered` remembers,
per helper, the hashes it sent (a helper that lost one since, evicted or
restarted, answers `missing` and the job goes again with them). `Digests`
keeps, in the long-lived `baton run` process, each file's hash by its stat
stamp (size, mtime, ctime, inode), so a header is read and hashed once per
build, not once per job. A file changed within the last SETTLE_NS is hashed
again every time (a timestamp's granularity could hide a second change, as
git's "racily clean" rule has it).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable, Iterable

from cluster.files import stat_stamp
from cluster.protocol import compile_pb2 as pb

SETTLE_NS = 2_000_000_000


class Digests:
    """`input(path, send_content)` -> pb.InputFile; thread-safe."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns):
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._known: dict[str, tuple[tuple, str, int]] = {}   # path -> (stamp, sha256, size)

    def input(self, path: str, send: Callable[[str], bool]) -> pb.InputFile:
        """The file named by hash; with its content when `send(sha256)` says the helper lacks it.
        OSError when it cannot be read."""
        return self.inputs([path], send)[0]

    def inputs(self, paths: Iterable[str], send: Callable[[str], bool]) -> list[pb.InputFile]:
        """`input` of each path. The files known are looked up under one lock a job, not one
        a file (~150 files a c-ares job, each job of `baton run` on the build's cores)."""
        stats = [(path, os.stat(path)) for path in paths]
        with self._lock:
            known = [self._known.get(path) for path, _ in stats]
        out = []
        for (path, st), was in zip(stats, known):
            if (was is not None and was[0] == stat_stamp(st)
                    and not send(was[1])):
                out.append(pb.InputFile(path=path, sha256=was[1], size=was[2]))
            else:
                out.append(self._read(path, st, send))
        return out

    def _read(self, path: str, st: os.stat_result, send: Callable[[str], bool]) -> pb.InputFile:
        stamped = stat_stamp(st)
        with open(path, "rb") as f:
            content = f.read()
        digest = hashlib.sha256(content).hexdigest()
        if self._clock_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS and len(content) == st.st_size:
            with self._lock:
                self._known[path] = (stamped, digest, len(content))
        return pb.InputFile(path=path, sha256=digest, size=len(content), content=content if send(digest) else b"")


class Delivered:
    """Per helper address, the hashes whose content it was sent; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_helper: dict[str, set[str]] = {}

    def lacks(self, helper: str) -> Callable[[str], bool]:
        with self._lock:
            sent = self._by_helper.setdefault(helper, set())
        return lambda digest: digest not in sent

    def sent(self, helper: str, files: Iterable[pb.InputFile]) -> None:
        with self._lock:
            self._by_helper.setdefault(helper, set()).update(f.sha256 for f in files if f.content)

    def lost(self, helper: str, digests: Iterable[str]) -> None:
        with self._lock:
            self._by_helper.setdefault(helper, set()).difference_update(digests)
