"""Packed toolchains kept across builds, by compiler identity (docs/design.md section 8).

Packing a compiler (cli/toolchain.py `pack`) costs about 1.3 s of CPU for
Debian's GCC 12, mostly gzip; each `baton run` that ships its compiler used
to pay it again. `PackCache.get(compiler, identity)` keeps the archives in
`$BATON_CACHE_DIR/toolchains` (else `~/.cache/baton/toolchains`, mode 0700):

    <identity>.tar.gz   the archive, renamed into place whole
    <identity>.json     {"sha256", "size", "sources": [[path, size, mtime_ns], ...]}
    <identity>.lock     flock'ed while one process packs, checks or removes it

An archive is reused only when its sidecar is there, every file it was
packed from (driver, programs, specs, libraries, loader) still has the size
and mtime recorded (a library upgrade repacks, although libraries are not
part of the identity), and the archive's own bytes hash to the recorded
sha256: a truncated or corrupt file is repacked, never sent. The hash is
computed on the very descriptor that is then sent (`Packed.fd`, read with
pread), so a file another build replaces or removes meanwhile cannot change
what goes out. The cache is bounded (`max_bytes`): least recently used
archives go (mtime, touched on each use), never the one just used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from typing import Callable, Iterator

from cli import cache_home
from cluster.files import write_json_atomically

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024
_IDENTITY = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = ".tar.gz"

# packer(compiler, out, sources) -> identity: writes the archive to `out`, appends the
# paths it was made from to `sources` (cli.toolchain.pack).
Packer = Callable[[str, str, list], str]


class PackMismatch(Exception):
    """The compiler packed is not the one of the identity asked for."""


def cache_dir(env: dict | None = None) -> str:
    """$BATON_CACHE_DIR/toolchains, else $XDG_CACHE_HOME/baton/toolchains (~/.cache)."""
    return cache_home.cache_dir("toolchains", env)


@dataclasses.dataclass
class Packed:
    """One archive, open: `fd` (read it with os.pread), its `size` and `sha256`."""

    fd: int
    size: int
    sha256: str


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def _sha256(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


class PackCache:
    """`get(compiler, identity)` -> Packed: the cached archive when it is still good, else a
    fresh one (packed by `packer`, then kept). `packs` counts the packer's runs here."""

    def __init__(self, directory: str, packer: Packer, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.directory, self.packer, self.max_bytes = directory, packer, max_bytes
        self.packs = 0
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)   # another user's archive there would be run on helpers as ours

    def _path(self, identity: str, suffix: str) -> str:
        return os.path.join(self.directory, identity + suffix)

    @contextlib.contextmanager
    def _locked(self, identity: str, wait: bool = True) -> Iterator[bool]:
        with open(self._path(identity, ".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, compiler: str, identity: str) -> Packed:
        if not _IDENTITY.match(identity):
            raise ValueError(f"{identity[:80]!r} is not a compiler identity (a sha256)")
        with self._locked(identity):
            packed = self._cached(identity)
            if packed is None:
                packed = self._pack(compiler, identity)
            now = time.time_ns()   # a fine clock: the file system's own stamps are coarse
            os.utime(self._path(identity, _SUFFIX), ns=(now, now))   # the most recently used
        self._evict(keep=identity)
        return packed

    def _cached(self, identity: str) -> Packed | None:
        """The cached archive of `identity` if it is still what packing would make, else None."""
        archive = self._path(identity, _SUFFIX)
        try:
            with open(self._path(identity, ".json"), encoding="utf-8") as f:
                meta = json.load(f)
            sources, sha256, size = meta["sources"], meta["sha256"], meta["size"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cached toolchain %s: unreadable record (%s): packing it again", identity[:16], exc)
            return None
        try:
            if any(_stamp(stamp[0]) != stamp for stamp in sources):
                log.info("cached toolchain %s: a file it was packed from changed: packing it again", identity[:16])
                return None
        except (OSError, TypeError, IndexError):
            log.info("cached toolchain %s: a file it was packed from is gone: packing it again", identity[:16])
            return None
        try:
            fd = os.open(archive, os.O_RDONLY)
        except OSError:
            return None
        if os.fstat(fd).st_size == size and _sha256(fd) == sha256:
            return Packed(fd, size, sha256)
        os.close(fd)
        log.warning("cached toolchain %s: the archive does not hash to its record (truncated or corrupt): "
                    "packing it again", identity[:16])
        return None

    def _pack(self, compiler: str, identity: str) -> Packed:
        """With the identity's lock held: pack, then put the archive and its record in place."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=self.directory)
        try:
            sources: list[str] = []
            self.packs += 1
            got = self.packer(compiler, tmp, sources)
            if got != identity:
                raise PackMismatch("the compiler changed while it was packed")
            # The descriptor was opened before the packer wrote: reopen it to see the whole file.
            os.close(fd)
            fd = os.open(tmp, os.O_RDONLY)
            size = os.fstat(fd).st_size
            packed = Packed(fd, size, _sha256(fd))
            with contextlib.suppress(FileNotFoundError):   # never an archive next to an old record
                os.unlink(self._path(identity, ".json"))
            os.replace(tmp, self._path(identity, _SUFFIX))
            write_json_atomically(self._path(identity, ".json"),
                                  {"sha256": packed.sha256, "size": size,
                                   "sources": [_stamp(path) for path in sources]})
            return packed
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _evict(self, keep: str) -> None:
        """Least recently used archives out while the cache is over max_bytes (not `keep`,
        nor one another process has locked)."""
        entries = []
        for name in os.listdir(self.directory):
            identity = name[:-len(_SUFFIX)]
            if name.endswith(_SUFFIX) and _IDENTITY.match(identity):
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(os.path.join(self.directory, name))
                    entries.append((st.st_mtime_ns, st.st_size, identity))
        total = sum(size for _, size, _ in entries)
        for _, size, identity in sorted(entries):
            if total <= self.max_bytes:
                break
            if identity == keep:
                continue
            with self._locked(identity, wait=False) as locked:
                if not locked:
                    continue
                for suffix in (".json", _SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._path(identity, suffix))
            total -= size
            log.info("cached toolchain %s removed (the cache keeps %d bytes)", identity[:16], self.max_bytes)
