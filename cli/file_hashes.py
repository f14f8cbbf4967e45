"""Each file's sha256 by its stat stamp, for a whole `baton run`: a header is read and hashed once.

Two parts of a job need the hashes of the same ~150 headers (a c-ares job):
the scan cache's lookup compares each header's content with its entry's
(cli/scan_cache.py), and the request names each input by hash
(cli/job_inputs.py). Each kept its own cache by stamp, so a build read and
hashed every header twice and stat'ed it twice a job. One `FileHashes`
serves both (cli/job_server.py makes it), and the stamps a job's lookup took
(`Seen`) stand for that job's inputs: a header is stat'ed once a job and read
once a build.

The rules, the stricter of the two caches' before:
- a file is read between two stats that agree (cluster.files.stat_stamp) and
  its length is its size, else it changed while read (`Changed`, an OSError:
  the scan cache takes it as a miss);
- a hash is kept for its stamp only when the file's last change (mtime or
  ctime, whichever is later: a touched file may claim a future mtime) was
  more than SETTLE_NS before the read: a stamp taken closer to a change may
  stay as it is through a second change in the same timestamp tick (git's
  "racily clean" entries), so such a file is read and hashed at each look.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable, Iterable, NamedTuple

from cluster.files import stat_stamp

SETTLE_NS = 2_000_000_000
NOT_DERIVED = object()   # `Hashed.derived` of a file read without a `derive`


class Changed(OSError):
    """The file changed while it was read: its stamp is not its content's."""


class Hashed(NamedTuple):
    stamp: tuple          # cluster.files.stat_stamp: (size, mtime, ctime, inode, device)
    sha256: str
    derived: object = NOT_DERIVED   # what the reader's `derive` made of the content

    @property
    def size(self) -> int:
        return self.stamp[0]


# path -> Hashed: what one job saw (stamps taken in that job), handed from the scan cache's
# lookup to the request's digests (cli/job_inputs.Digests.inputs).
Seen = dict


class FileHashes:
    """`look(path)` / `look_all(paths)` -> Hashed; `read(path)` -> (Hashed, content). Thread-safe."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns):
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._known: dict[str, Hashed] = {}
        self.reads = 0       # files read (a bench's and a test's figure)

    def look(self, path: str, derive: Callable[[bytes], object] | None = None) -> Hashed:
        """The file's Hashed now (its stamp stat'ed now), read only when its stamp is not a settled
        one already hashed (with `derive`'s part when asked); OSError when unreadable or Changed."""
        return self.look_all([path], derive)[0]

    def look_all(self, paths: Iterable[str], derive: Callable[[bytes], object] | None = None,
                 seen: Seen | None = None, strict: bool = True,
                 contents: dict[str, bytes] | None = None) -> list[Hashed]:
        """`look` of each path, the known ones found under one lock (not one a file: ~150 a job,
        each job on the build's cores); each added to `seen` as it is looked at. Not `strict`: a
        file that changed while read gives what was read, hashed (not kept). `contents` gets
        the content of each file read (a caller about to send it need not read it again)."""
        stats = [(path, os.stat(path)) for path in paths]
        with self._lock:
            known = [self._known.get(path) for path, _ in stats]
        out = []
        for (path, st), was in zip(stats, known):
            if was is None or was.stamp != stat_stamp(st) or (derive is not None and was.derived is NOT_DERIVED):
                was, content = self._read(path, st, derive, strict)
                if contents is not None:
                    contents[path] = content
            if seen is not None:
                seen[path] = was
            out.append(was)
        return out

    def read(self, path: str, seen: Hashed | None = None) -> tuple[Hashed, bytes]:
        """The content (to send) and its Hashed. A file that changed while read still gives what
        was read, hashed (not kept). `seen`: the Hashed this content is expected to have (kept
        with its `derived` when it still matches)."""
        st = os.stat(path)
        hashed, content = self._read(path, st, None, strict=False)
        if seen is not None and hashed[:2] == seen[:2]:
            hashed = seen
        return hashed, content

    def _read(self, path: str, st: os.stat_result, derive, strict: bool) -> tuple[Hashed, bytes]:
        stamped = stat_stamp(st)
        with open(path, "rb") as f:
            content = f.read()
        with self._lock:
            self.reads += 1
        whole = len(content) == st.st_size and stat_stamp(os.stat(path)) == stamped
        if not whole and strict:
            raise Changed(f"{path} changed while read")
        if not whole:   # (not kept) the size sent is what was read
            stamped = (len(content), *stamped[1:])
        hashed = Hashed(stamped, hashlib.sha256(content).hexdigest(),
                        NOT_DERIVED if derive is None else derive(content))
        if whole and self._clock_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS:
            with self._lock:
                was = self._known.get(path)
                # A `derived` part already known for this content stays.
                if derive is None and was is not None and was[:2] == hashed[:2]:
                    hashed = was
                self._known[path] = hashed
        return hashed, content
