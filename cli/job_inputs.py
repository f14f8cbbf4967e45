"""The initiator's half of the helpers' input stores (agent/input_store.py).

A job names each file it reads by (path, sha256, size) and carries the
content only of those its helper was not sent before: `Delivered` remembers,
per helper, the hashes it sent (a helper that lost one since, evicted or
restarted, answers `missing` and the job goes again with them). `Digests`
takes each file's hash from the `baton run` process's FileHashes
(cli/file_hashes.py: by stat stamp, read once per build, again while racy),
which the scan cache's lookup shares; the stamps that lookup took in this
job (`seen`) stand for the inputs it looked at, so a header is stat'ed once
a job, not once for the lookup and once here.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterable

from cli.file_hashes import FileHashes, Hashed, Seen
from cluster.protocol import compile_pb2 as pb


class Digests:
    """`input(path, send_content)` -> pb.InputFile; thread-safe."""

    def __init__(self, hashes: FileHashes | None = None, clock_ns: Callable[[], int] | None = None):
        self.hashes = hashes or (FileHashes(clock_ns) if clock_ns else FileHashes())
        self._lock = threading.Lock()
        # path -> (Hashed, its InputFile by hash): the message made once per kept hash, not once a
        # job (~60 us of ~150 messages a c-ares job). Not to be changed by callers.
        self._made: dict[str, tuple[Hashed, pb.InputFile]] = {}

    def input(self, path: str, send: Callable[[str], bool]) -> pb.InputFile:
        """The file named by hash; with its content when `send(sha256)` says the helper lacks it.
        OSError when it cannot be read."""
        return self.inputs([path], send)[0]

    def inputs(self, paths: Iterable[str], send: Callable[[str], bool], seen: Seen | None = None) -> list[pb.InputFile]:
        """`input` of each path; `seen`: what this job's scan-cache lookup found (stamped in this
        job: not stat'ed again), the others looked at now."""
        paths = list(paths)
        seen = dict(seen or ())
        contents: dict[str, bytes] = {}
        unseen = [path for path in paths if path not in seen]
        if unseen:
            self.hashes.look_all(unseen, seen=seen, strict=False, contents=contents)
        with self._lock:
            made = [self._made.get(path) for path in paths]
        out, new = [], {}
        for path, was in zip(paths, made):
            hashed = seen[path]
            if send(hashed.sha256):
                content = contents.get(path)
                if content is None:
                    # Read now: what is sent, with its own hash (it may have changed since looked at).
                    hashed, content = self.hashes.read(path, hashed)
                if send(hashed.sha256):
                    out.append(pb.InputFile(path=path, sha256=hashed.sha256, size=len(content), content=content))
                    continue
            if was is None or was[0] is not hashed:
                was = new[path] = (hashed, pb.InputFile(path=path, sha256=hashed.sha256, size=hashed.size))
            out.append(was[1])
        if new:
            with self._lock:
                self._made.update(new)
        return out


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
