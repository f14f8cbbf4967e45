"""A helper's store of compile inputs by content: a header travels once per helper, not once per job.

A job names its files by (path, sha256, size) (compile.proto InputFile).
The store keeps contents by their sha256, one read-only file each, in a
directory of the agent's (mode 0700; the compile user reaches a content
only through the hard link in its job root). A content is stored only
after the helper hashed it itself: a claimed hash is never trusted, and a
content that does not hash to its claim refuses the job. The store is
bounded in bytes: the least recently used contents go first; a job whose
content was evicted between the check and its layout answers "missing"
and the initiator sends it again (agent/compile_job.py lays out a job's
root by hard links to these files).

It starts empty (the directory is cleared): what a previous run of the
agent left is not counted, so it would not stay bounded.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import shutil
import threading

from cluster.files import write_all

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
EMPTY = hashlib.sha256(b"").hexdigest()
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ContentMismatch(ValueError):
    """A content that does not hash to the sha256 claimed for it."""


class InputStore:
    """`put(digest, content)`, `path(digest)` -> a file or None, `missing(digests)`; thread-safe."""

    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES):
        self.directory, self.max_bytes = directory, max_bytes
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700)
        self._lock = threading.Lock()
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()  # oldest use first
        self._bytes = 0
        self._serial = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._sizes)

    def put(self, digest: str, content: bytes) -> None:
        """Keep `content` under `digest`; ContentMismatch when it hashes to anything else."""
        if not _DIGEST.match(digest) or hashlib.sha256(content).hexdigest() != digest:
            raise ContentMismatch(f"a content does not hash to the sha256 claimed for it ({digest[:80]!r})")
        with self._lock:
            if digest in self._sizes:
                self._sizes.move_to_end(digest)
                return
            self._serial += 1
            tmp = os.path.join(self.directory, f".{self._serial}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            write_all(fd, content)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.directory, digest))
        with self._lock:
            if digest not in self._sizes:
                self._bytes += len(content)
            self._sizes[digest] = len(content)
            self._sizes.move_to_end(digest)
            while self._bytes > self.max_bytes and len(self._sizes) > 1:
                old, size = self._sizes.popitem(last=False)
                self._bytes -= size
                try:
                    os.unlink(os.path.join(self.directory, old))
                except FileNotFoundError:
                    pass

    def path(self, digest: str) -> str | None:
        """The stored file of `digest` (marked as just used), or None."""
        with self._lock:
            if digest not in self._sizes:
                return None
            self._sizes.move_to_end(digest)
        return os.path.join(self.directory, digest)

    def size(self, digest: str) -> int | None:
        with self._lock:
            return self._sizes.get(digest)

    def total_size(self, digests) -> int:
        """The bytes of these contents (each once; those not stored count 0), under one lock."""
        with self._lock:
            return sum(self._sizes.get(d, 0) for d in set(digests))

    def missing(self, digests) -> list[str]:
        with self._lock:
            return [d for d in dict.fromkeys(digests) if d not in self._sizes]
