"""The scan cache of `baton run`: a compile scanned before is not scanned again ("direct mode").

The initiator's scan (cli/compile_scan.py) costs a preprocessor run per job on
the initiator's cores. As ccache's direct mode does for its manifest, an entry
keyed by everything the header set can depend on remembers the scan's result:

- key: sha256 over the compiler's identity, the scan's whole argv (so the
  dependency file's target and name, -MF/-MT, are the same), the working
  directory, the source's sha256 and the environment variables the
  preprocessor reads (PATH, CPATH, ...: `KEY_ENV`);
- value: the headers in the order read, each with its stat stamp and sha256;
  the stamps of every directory a lookup could have probed (`probes`); the
  dependency file's path and bytes.

A hit needs every header's content unchanged (stamp, or sha256 when the
stamp moved) and every probed directory's stamp unchanged: an include
directory earlier in the search path gaining a file that would shadow a
header changes that directory's mtime and ctime. The probes are, for each
header H included from file F, every directory of F's search chain (F's own
directory, the working directory, -iquote, -I, -isystem, the compiler's own,
-idirafter) joined with the subdirectory H was named by (`<sys/x.h>`: each
dir/sys). Then the hit writes the dependency file's bytes, as the scan would
have, and runs no preprocessor.

Never wrong, so a compile is not cached (always scanned) on any doubt: a
path with `..` (textual and physical lookups could differ), a header not under
any directory of its chain, -iprefix/-isysroot style flags or CPATH-style
variables, a `__has_include` whose name is not a literal (a literal name is
probed like an include), a file or directory changed within RACY_NS before the
scan started (a change in the same timestamp tick would be invisible).

Entries live in $BATON_CACHE_DIR/scan (else ~/.cache/baton/scan), one JSON
file each, written to a temporary name and renamed (concurrent `baton run`s
see a whole entry or none); beyond MAX_ENTRIES the oldest are removed.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from typing import Callable

from cli import cache_home
from cli.cc_args import RemotePlan
from cli.compile_scan import PREINCLUDED, Scan

VERSION = 1
MAX_ENTRIES = 20_000
RACY_NS = 1_000_000_000    # above any filesystem timestamp tick (Linux: one jiffy)
KEY_ENV = ("PATH", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "DEPENDENCIES_OUTPUT",
           "SUNPRO_DEPENDENCIES", "GCC_EXEC_PREFIX", "COMPILER_PATH", "SOURCE_DATE_EPOCH")
# They add include directories the probes would not know of.
DOUBT_ENV = KEY_ENV[1:9]
DOUBT_FLAGS = ("-iprefix", "-iwithprefix", "-iwithprefixbefore", "-isysroot", "-imultilib", "--sysroot")
CHAIN_FLAGS = ("-iquote", "-I", "-isystem", "-idirafter")
_HAS_INCLUDE = re.compile(rb"has_include(?:_next)?_*\s*\(\s*(?:[<\"]([^>\"\n]+)[>\"])?")
_DEFINE_LINE = re.compile(rb"^\s*#\s*define\b")


class Uncacheable(Exception):
    """A doubt: this compile is scanned every time."""


def cache_dir(env: dict | None = None) -> str:
    """$BATON_CACHE_DIR/scan, else $XDG_CACHE_HOME/baton/scan (~/.cache)."""
    return cache_home.cache_dir("scan", env)


def depfile(plan: RemotePlan) -> str | None:
    """The dependency file the scan writes, as the argv names it (None: to nowhere)."""
    if not any(d in ("-MD", "-MMD") for d in plan.dep_flags):
        return None
    named = None
    flags = iter(plan.dep_flags)
    for arg in flags:
        if arg in ("-MF", "-MT", "-MQ"):
            value = next(flags, None)
            named = value if arg == "-MF" else named
        elif arg.startswith("-MF"):
            named = arg[3:]
    if named is None:
        raise Uncacheable("no -MF")
    return named


def cached_scan(cache: "ScanCache | None", plan: RemotePlan, cwd: str, env: dict, identity: str,
                system: tuple[str, ...], scan: Callable[[], Scan]) -> Scan:
    """The scan from `cache` when it holds it (the dependency file written), else `scan()`, remembered."""
    if cache is None:
        return scan()
    started = cache.now_ns()
    try:
        named = depfile(plan)
        source = os.path.join(cwd, plan.source)
        key = cache.key(identity, plan, cwd, cache.source_sha256(source), env)
    except (Uncacheable, OSError):
        return scan()
    found = cache.lookup(key, cwd, named)
    if found is None:
        found = scan()
        cache.store(key, plan, cwd, found, system, named, started)
    return found


def _dir_stamp(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _climbs(path: str) -> bool:
    return ".." in path.split("/")


def chain_dirs(plan: RemotePlan, cwd: str, system: tuple[str, ...]) -> list[str]:
    """The search directories after the includer's own, in order (absolute, normalised)."""
    found: dict[str, list[str]] = {flag: [] for flag in CHAIN_FLAGS}
    flags = list(plan.flags)
    for i, arg in enumerate(flags):
        if arg.startswith(DOUBT_FLAGS):
            raise Uncacheable(f"{arg} moves the include directories")
        for flag in CHAIN_FLAGS:
            if arg == flag and i + 1 < len(flags):
                found[flag].append(flags[i + 1])
            elif arg.startswith(flag) and len(arg) > len(flag) and not (flag == "-I" and arg == "-I-"):
                found[flag].append(arg[len(flag):])
    if "-I-" in flags:
        raise Uncacheable("-I- changes the quote search")
    # The compiler's own directories come spelt as it spells them (cli.compile_scan.system_dirs):
    # as trusted here as before, when they came normalised.
    system = tuple(os.path.normpath(d) for d in system)
    ordered = [cwd, *found["-iquote"], *found["-I"], *found["-isystem"], *system, *found["-idirafter"]]
    if any(_climbs(d) for d in ordered):
        raise Uncacheable("an include directory with '..'")
    return list(dict.fromkeys(os.path.normpath(os.path.join(cwd, d)) for d in ordered))


def probe_dirs(source: str, tree: tuple[tuple[int, str], ...], chain: list[str]) -> list[str]:
    """Every directory whose change could change where a header of `tree` is found.
    `tree`: (depth, absolute normalised path) in -H order; `source` absolute.

    A c-ares job lists ~180 headers against ~10 directories: the probes of an
    (includer's directory, subdirectory) pair are made once and the chain's once per
    subdirectory (a repeat adds nothing, so the list and its order are as if each
    header added them all), and the subdirectory is cut from the path, not computed
    by relpath (both are normalised): a c-ares scan's store went from ~5.6 ms to
    ~1.9 ms of the initiator's CPU (bench/README.md, issue 14)."""
    probes: dict[str, None] = dict.fromkeys(chain)
    prefixes = [(d.rstrip("/") + "/") for d in chain]
    stack = [source]                 # stack[d]: the file including those of depth d
    done: set[tuple[str, str]] = set()
    subs: set[str] = set()
    for depth, path in tree:
        if _climbs(path):
            raise Uncacheable("a header named with '..'")
        del stack[depth + 1:]
        if len(stack) != depth + 1:
            raise Uncacheable("an include tree the scan did not list in order")
        own = os.path.dirname(stack[-1])
        probes.setdefault(own, None)
        explained = False
        for prefix in ((own.rstrip("/") + "/"), *prefixes):
            if path.startswith(prefix):
                explained = True
                sub = os.path.dirname(path[len(prefix):])
                if (own, sub) not in done:
                    done.add((own, sub))
                    probes.setdefault(os.path.normpath(os.path.join(own, sub)), None)
                    if sub not in subs:     # the chain's part depends on the subdirectory alone
                        subs.add(sub)
                        for other in chain:
                            probes.setdefault(os.path.normpath(os.path.join(other, sub)), None)
        if not explained:
            raise Uncacheable(f"{path} is under none of its search directories")
        stack.append(path)
    return list(probes)


def has_include_names(content: bytes) -> list[str]:
    """The literal names `__has_include` asks for; Uncacheable for a computed one outside a #define."""
    if b"has_include" not in content:
        return []
    names = []
    for line in content.splitlines():
        for match in _HAS_INCLUDE.finditer(line):
            if match.group(1) is not None:
                names.append(os.fsdecode(match.group(1)))
            elif not _DEFINE_LINE.match(line):
                raise Uncacheable("a __has_include of a computed name")
    return names


class ScanCache:
    """`lookup(...)` -> Scan or None (and writes the dependency file); `store(...)` after a scan.
    Thread-safe; any failure to read or write the cache is a miss."""

    def __init__(self, directory: str, clock_ns: Callable[[], int] = time.time_ns):
        self.directory = directory
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple, str, list[str]]] = {}   # path -> (stamp, sha256, has_include names)
        self._stores = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(identity: str, plan: RemotePlan, cwd: str, source_sha256: str, env: dict) -> str:
        if any(env.get(name) for name in DOUBT_ENV):
            raise Uncacheable("CPATH-style variables add include directories")
        material = [VERSION, identity, plan.scan_argv(), os.path.abspath(cwd), source_sha256,
                    [[name, env.get(name)] for name in KEY_ENV]]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".json")

    def _file(self, path: str) -> tuple[tuple, str, list[str]]:
        """(stamp, sha256, __has_include names) of a file, read once per stamp."""
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        with self._lock:
            known = self._files.get(path)
        if known is not None and known[0] == stamp:
            return known
        with open(path, "rb") as f:
            content = f.read()
        try:
            names = has_include_names(content)
        except Uncacheable:
            names = None
        known = (stamp, hashlib.sha256(content).hexdigest(), names)
        if self._clock_ns() - st.st_ctime_ns > RACY_NS and len(content) == st.st_size:
            with self._lock:
                self._files[path] = known
        return known

    def lookup(self, key: str, cwd: str, depfile: str | None) -> Scan | None:
        """The cached scan, its dependency file written (`depfile`: as the argv names it), or None."""
        try:
            with open(self._path(key), "rb") as f:
                entry = json.loads(f.read())
            if entry.get("v") != VERSION or entry.get("depfile") != depfile:
                raise ValueError("another entry")
            for path, stamp in entry["probes"]:
                if _dir_stamp(path) != stamp:
                    raise ValueError("a directory changed")
            for path, stamp, digest in entry["files"]:
                known = self._file(path)
                if list(known[0]) != stamp and known[1] != digest:
                    raise ValueError("a header changed")
            if depfile is not None:
                with open(os.path.join(cwd, depfile), "wb") as f:
                    f.write(base64.b64decode(entry["d"]))
        except (OSError, ValueError, KeyError, TypeError):
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return Scan(headers=tuple(entry["headers"]))

    def now_ns(self) -> int:
        return self._clock_ns()

    def source_sha256(self, path: str) -> str:
        return self._file(path)[1]

    def store(self, key: str, plan: RemotePlan, cwd: str, found: Scan, system: tuple[str, ...],
              depfile: str | None, started_ns: int) -> None:
        """Remember `found` (scanned from `started_ns` on); silently not, on any doubt."""
        try:
            self._store(key, plan, cwd, found, system, depfile, started_ns)
        except (Uncacheable, OSError, ValueError):
            pass

    def _store(self, key, plan, cwd, found, system, depfile, started_ns) -> None:
        cwd = os.path.abspath(cwd)
        chain = chain_dirs(plan, cwd, system)
        source = os.path.normpath(os.path.join(cwd, plan.source))
        if _climbs(plan.source):
            raise Uncacheable("a source named with '..'")
        probes = probe_dirs(source, found.tree, chain)
        files = []
        # GCC includes stdc-predef.h unnamed (cli/compile_scan.py); its directory is probed as a chain's.
        predefined = [os.path.join(d, n) for d in system for n in PREINCLUDED if os.path.isfile(os.path.join(d, n))]
        for path in (source, *found.headers, *predefined[:1]):
            stamp, digest, names = self._file(path)
            if names is None:
                raise Uncacheable(f"{path}: a __has_include of a computed name")
            if started_ns - stamp[2] <= RACY_NS:
                raise Uncacheable(f"{path} changed just before the scan")
            for name in names:
                if _climbs(name) or os.path.isabs(name):
                    raise Uncacheable("a __has_include of a path")
                for base in [os.path.dirname(path), *chain]:
                    probes.append(os.path.normpath(os.path.join(base, os.path.dirname(name))))
            if path != source:
                files.append([path, list(stamp), digest])
        stamped = []
        for path in dict.fromkeys(probes):
            stamp = _dir_stamp(path)
            if stamp is not None and started_ns - stamp[1] <= RACY_NS:
                raise Uncacheable(f"{path} changed just before the scan")
            stamped.append([path, stamp])
        d = b""
        if depfile is not None:
            with open(os.path.join(cwd, depfile), "rb") as f:
                d = f.read()
        entry = {"v": VERSION, "headers": list(found.headers), "files": files, "probes": stamped,
                 "depfile": depfile, "d": base64.b64encode(d).decode()}
        self._write(key, json.dumps(entry).encode())

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        with self._lock:
            self._stores += 1
            trim = self._stores % 256 == 1
        if trim:
            self.trim()

    def trim(self, keep: int = MAX_ENTRIES) -> None:
        """Remove the oldest entries beyond `keep` (another `baton run` may remove them too)."""
        entries = []
        for root, _, names in os.walk(self.directory):
            for name in names:
                path = os.path.join(root, name)
                try:
                    entries.append((os.stat(path).st_mtime_ns, path))
                except OSError:
                    pass
        entries.sort(reverse=True)
        for _, path in entries[keep:]:
            try:
                os.unlink(path)
            except OSError:
                pass
