"""The directories a helper compiles in, reused from job to job.

A job root holds the job's files at their initiator paths (agent/compile_job.py
maps every path into it). Making and removing its ~30 directories per job
cost more than the hard links themselves (measured on an overlay file
system: ~0.3 ms a mkdir, ~0.5 ms a rmdir, ~25 ms a c-ares job), so a root
is kept for the next job: what both jobs name with the same content stays,
every other file of the last job is removed, and the new ones are linked
from the store (agent/input_store.py). A reused root thus holds exactly the
job's files; directories of earlier jobs stay, empty, and an empty
directory is not a header (the preprocessor skips a directory where it
looks for a file). A root is used by one job at a time; a root whose
layout failed half-way is removed, not reused.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading


class JobRefused(ValueError):
    """The job asks for something a helper does not do; the initiator compiles it itself."""


class InputsMissing(Exception):
    """The store lacks some of the job's inputs (`digests`): the initiator sends them and the job again."""

    def __init__(self, digests: list[str]):
        super().__init__(f"{len(digests)} input(s) missing")
        self.digests = digests


def inside(root: str, path: str) -> str:
    """root + path, refused when the path (made absolute against nothing) leaves root."""
    if path[:1] == "/" and "//" not in path and "/." not in path and path[-1:] != "/":
        return root + path   # already normal (no '.', '..' or empty part): ~150 a job, most of lay_out's CPU
    if not os.path.isabs(path):
        raise JobRefused(f"{path[:80]!r} is not an absolute path")
    mapped = os.path.normpath(root + os.path.normpath(path))
    if mapped != root and not mapped.startswith(root + os.sep):
        raise JobRefused(f"{path[:80]!r} leaves the job")
    return mapped


def inside_as_spelt(root: str, path: str) -> str:
    """root + path spelt as given, '..' kept: Clang names libstdc++'s directory
    /usr/bin/../lib/gcc/<triple>/12/../../../../include/c++/12 and records that spelling in the
    debug line table, so the helper must name it alike (docs/internals.md). Refused when a '..'
    climbs above root, even to come back: a job root holds only real directories and files (no
    symlinks), so once `JobRoot.spelt` has made the directories each '..' climbs out of, the
    path resolves where its normalised form does."""
    if not os.path.isabs(path):
        raise JobRefused(f"{path[:80]!r} is not an absolute path")
    if climbs_above_root(path):
        raise JobRefused(f"{path[:80]!r} leaves the job")
    return root + path


def climbs_above_root(path: str) -> bool:
    """Whether a '..' of `path` (absolute), counted part by part, climbs above '/'."""
    depth = 0
    for part in path.split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return True
    return False


def from_cwd(cwd: str, path: str) -> str:
    """A relative `path` of the job as spelt, after its working directory `cwd` (absolute):
    the compiler resolves it from root + cwd, where a '..' is textual (a job root holds only
    directories and hard links, no symlinks) as long as it does not climb above root, so
    `-I../include` and `../src/a.c` stay relative (-g records them as spelt). JobRefused
    when it climbs above root (`-I../../../../etc` from a shallow cwd)."""
    spelt = os.path.normpath(cwd).rstrip("/") + "/" + path
    if climbs_above_root(spelt):
        raise JobRefused(f"{path[:80]!r} climbs above the job's root from {cwd[:80]!r}")
    return spelt


class JobRoot:
    """`root`: where the job's files go; `out`: where the compiler writes (the compile user's)."""

    def __init__(self, path: str, user: str | int | None = None):
        self.path = path
        self.root = os.path.join(path, "root")
        self.out = os.path.join(path, "out")
        os.chmod(path, 0o755)
        os.makedirs(self.root)
        os.makedirs(self.out)
        if user is not None:
            shutil.chown(self.out, user=user)
        self._files: dict[str, str | None] = {}   # mapped path -> sha256 (None: written, not linked)
        self._dirs: set[str] = set()

    def _parent(self, target: str) -> None:
        parent = os.path.dirname(target)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)

    def spelt(self, path: str) -> str:
        """`path` in the root as spelt (inside_as_spelt), with the directories its '..'
        components climb out of made: a '..' after a directory that is not there fails."""
        mapped = inside_as_spelt(self.root, path)
        parts = path.split("/")
        for i, part in enumerate(parts):
            if part != "..":
                continue
            climbed = os.path.normpath(self.root + "/".join(parts[:i]))
            if climbed not in self._dirs:
                try:
                    os.makedirs(climbed, exist_ok=True)
                except OSError as e:   # a job file where the path needs a directory
                    raise JobRefused(f"{path[:80]!r}: {e.strerror}") from None
                self._dirs.add(climbed)
        return mapped

    def lay_out(self, files, inputs, store) -> None:
        """Exactly these files under `root`: `files` (path -> content) written, `inputs`
        (path -> sha256) hard-linked from `store` (copied when a link cannot be made);
        InputsMissing for the contents the store lacks."""
        wanted = {inside(self.root, p): d for p, d in inputs.items()}
        written = {inside(self.root, p): c for p, c in files.items()}
        if wanted.keys() & written.keys():
            raise JobRefused("a path is named twice")
        for target, had in list(self._files.items()):
            if had is None or wanted.get(target) != had:
                os.unlink(target)   # never written through: a link's inode is the store's
                del self._files[target]
        for target, content in written.items():
            self._parent(target)
            with open(target, "xb") as f:
                f.write(content)
            self._files[target] = None
        missing = []
        for target, digest in wanted.items():
            if self._files.get(target) == digest:
                continue
            self._parent(target)
            stored = store.path(digest) if store is not None else None
            try:
                if stored is None:
                    raise FileNotFoundError(digest)
                os.link(stored, target)
            except FileNotFoundError:   # never stored, or evicted since: the initiator sends it again
                missing.append(digest)
                continue
            except OSError:             # another file system, or links refused: a copy does
                shutil.copyfile(stored, target)
            self._files[target] = digest
        if missing:
            raise InputsMissing(missing)


class RootPool:
    """Job roots under `directory`: `take()` one, `give(root)` it back after the job or
    `discard(root)` it; at most `keep` idle roots are kept."""

    def __init__(self, directory: str, user: str | int | None = None, keep: int = 8):
        self.directory, self.user, self.keep = directory, user, keep
        self._lock = threading.Lock()
        self._idle: list[JobRoot] = []

    def take(self) -> JobRoot:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return JobRoot(tempfile.mkdtemp(prefix="baton-job-", dir=self.directory), self.user)

    def give(self, root: JobRoot) -> None:
        for name in os.listdir(root.out):   # the last object: the next job writes its own
            os.unlink(os.path.join(root.out, name))
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(root)
                return
        self.discard(root)

    @staticmethod
    def discard(root: JobRoot) -> None:
        shutil.rmtree(root.path, ignore_errors=True)
