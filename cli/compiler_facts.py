"""What `baton run` learns once about each compiler: its identity and its system directories.

Every job needs both (cli/job_server.py): the identity names the compiler to
the helper (agent.compile_job.compiler_identity, kept across builds by
cli/identity_cache.py), and the system directories (cli.compile_scan.system_dirs,
one `COMPILER -E -v` run) are where its `<...>` includes are found. `identity`
and `system_dirs` compute each once per compiler (`Once`), however many jobs ask
at once. `prefetch(path)` computes them for the compilers a build's wrappers
will find (`cc` for C, `c++` for C++), in a thread, while `baton run` is still
importing grpc and etcd3 on its other core: the first job found them computed
instead of waiting ~15 ms for them (~80 ms when the identity is not cached
yet: bench/README.md, issue 14). This module imports neither grpc nor protobuf.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

from cli.cc import real_compiler
from cli.compile_scan import system_dirs as list_system_dirs
from cli.identity_cache import compiler_identity

log = logging.getLogger(__name__)
T = TypeVar("T")

# The compilers a build's wrappers find under the names CC and CXX name (cli/run.py), and the
# language of the sources each compiles in a C or C++ project.
PREFETCHED = (("cc", "c"), ("c++", "c++"))


class Once:
    """`once(*key)`: `compute(*key)`, computed once per key even when several jobs ask at
    once. functools.lru_cache does not hold back a second caller while the first computes:
    at a build's start every job of -jN computed the compiler's identity (~60 ms of CPU:
    hashing cc1, cc1plus, as) and its system directories, N times over, while the build
    waited for its first jobs (bench/README.md, issue 14). A failure is not kept (the next
    caller computes again, as with lru_cache); beyond `size` keys the oldest is dropped."""

    def __init__(self, compute: Callable[..., T], size: int = 32):
        self._compute, self._size = compute, size
        self._lock = threading.Lock()
        self._values: dict[tuple, T] = {}
        self._computing: dict[tuple, threading.Lock] = {}

    def __call__(self, *key) -> T:
        with self._lock:
            if key in self._values:
                return self._values[key]
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:
            with self._lock:
                if key in self._values:   # computed while this caller waited
                    return self._values[key]
            value = self._compute(*key)
            with self._lock:
                self._values[key] = value
                self._computing.pop(key, None)
                while len(self._values) > self._size:
                    del self._values[next(iter(self._values))]
            return value


# Looked up at each call (not bound here), so that the module's names stay the ones used.
identity = Once(lambda compiler: compiler_identity(compiler))
system_dirs = Once(lambda compiler, language: list_system_dirs(compiler, language))


def prefetch(path: str | None = None) -> threading.Thread:
    """Start computing `identity` and `system_dirs` of the PREFETCHED compilers on `path`
    (default $PATH, the wrapper directory skipped as the wrappers skip it); returns the
    thread. A compiler that is missing or fails is left to the jobs (which then compute,
    or fail, as they would have); nothing here can fail a build."""
    def run() -> None:
        for name, language in PREFETCHED:
            try:
                compiler = real_compiler(name, path)
                identity(compiler)
                system_dirs(compiler, language)
            except Exception as exc:   # noqa: BLE001 - a guess that did not work out costs nothing
                log.debug("baton run: no early look at %s: %s", name, exc)

    thread = threading.Thread(target=run, name="compiler-facts", daemon=True)
    thread.start()
    return thread
