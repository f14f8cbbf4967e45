"""The scan cache of `baton run`: a compile scanned before is not scanned again ("direct mode").

The initiator's scan (cli/compile_scan.py) costs a preprocessor run per job on
the initiator's cores. As ccache's direct mode does for its manifest, an entry
keyed by everything the header set can depend on remembers the scan's result:

- key: sha256 over the compiler's identity, the scan's whole argv (so the
  dependency file's target and name, -MF/-MT, are the same), the working
  directory, the source's sha256 and the environment variables the
  preprocessor reads (PATH, CPATH, ...: `KEY_ENV`);
- value: the headers in the order read, each with its sha256; the
  directories a lookup could have probed (`probes`), each with its stat
  stamp and the part of its listing a lookup could open (every header's
  name, every first missing name below, their `.gch`; casefolded); the
  dependency file's path and bytes.

A hit needs every header's content unchanged and every probed directory's
entries unchanged: an include directory earlier in the search path gaining
a file that would shadow a header changes that directory's mtime and ctime
and its listing. The probes are, for each header H included from file F,
every directory of F's search chain (F's own directory, the working
directory, -iquote, -I, -isystem, the compiler's own, -idirafter) joined
with the subdirectory H was named by (`<sys/x.h>`: each dir/sys). A probe
that does not exist is stood for by its nearest existing ancestor when the
first missing name is not there at all (that ancestor's entries unchanged,
it is still missing; a dangling symlink or a file in the way: the probe is
stamped itself). A directory whose stamp is the same needs no more; one whose
stamp moved (ninja creating .ninja_log, a configure renaming files) is
listed, and hits when the names a lookup could open are the same, of the
same kinds. Then the hit writes the dependency file's bytes, as the scan
would have, and runs no preprocessor.

Timestamps, as git does with racily clean index entries. A stamp taken
within RACY_NS after the thing's last change (ctime) may stay the same
through a change in the same timestamp tick, so a stamp never stands for
content alone: a header's sha256 is compared at each lookup (hashed once
per stamp and run, and again at each lookup while its stamp is racy, within
SETTLE_NS of its last change: cli/file_hashes.py, shared with the request's
digests), and a directory changed within RACY_NS before the scan started is
marked racy: listed at each lookup, whatever its stamp (so is one with a
dangling symlink named as a header, whose target appearing would not move
the directory's stamp). A lookup that finds a racy directory's stamp settled
(older than RACY_NS, the same before and after the listing) rewrites the
entry with that stamp, no longer racy. What changed after the scan started
(ctime later than the start minus TICK_NS, the kernel's timestamp lag;
RACY_NS for a ctime in whole milliseconds, perhaps a coarse filesystem's)
is not stored: the scan may have read other content than what is hashed or
listed afterwards. A file is hashed, a directory listed, between two stats
that must agree.

Never wrong, so a compile is not cached (always scanned) on any doubt: a
path with `..` (textual and physical lookups could differ), a header not under
any directory of its chain, -iprefix/-isysroot/-remap style flags or
CPATH-style variables, a `__has_include` whose name is not a literal (a
literal name is probed like an include), a file or directory changed after
the scan started.

Entries live in $BATON_CACHE_DIR/scan (else ~/.cache/baton/scan), one JSON
file each, written to a temporary name and renamed (concurrent `baton run`s
see a whole entry or none); beyond MAX_ENTRIES the oldest are removed.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from typing import Callable

from cli import cache_home
from cli.cc_args import RemotePlan
from cli.compile_scan import PREINCLUDED, Scan
from cli.file_hashes import FileHashes, Hashed, Seen
from cluster.files import write_all

VERSION = 3   # 3: the files' paths as one string, their digests as another; listings and names as text
MAX_ENTRIES = 20_000
# A stamp this close to the scan's start is racy: a later change in the same timestamp tick could
# leave it as it is, so what it stands for is checked again at each lookup.
RACY_NS = 1_000_000_000
# A change made after the scan started carries a ctime no earlier than the start minus the kernel's
# coarse clock lag (one jiffy, <= 10 ms) and the timestamp's granularity; a ctime that is a whole
# number of milliseconds may come from a coarser filesystem (ext3, FAT) and is given RACY_NS.
TICK_NS = 100_000_000
KEY_ENV = ("PATH", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "DEPENDENCIES_OUTPUT",
           "SUNPRO_DEPENDENCIES", "GCC_EXEC_PREFIX", "COMPILER_PATH", "SOURCE_DATE_EPOCH")
# They add include directories the probes would not know of.
DOUBT_ENV = KEY_ENV[1:9]
DOUBT_FLAGS = ("-iprefix", "-iwithprefix", "-iwithprefixbefore", "-isysroot", "-imultilib", "--sysroot",
               "-remap")   # -remap: each directory's header.gcc renames headers
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
    """The scan from `cache` when it holds it (the dependency file written), else `scan()`, remembered.
    Its `seen`: the files the lookup (a hit) or the store (after a scan) looked at, stamped in this
    job (cli/job_inputs.Digests takes their hashes without a stat)."""
    if cache is None:
        return scan()
    started = cache.now_ns()
    seen: Seen = {}
    try:
        named = depfile(plan)
        source = os.path.join(cwd, plan.source)
        digest = cache.source_sha256(source, seen)
        key = cache.key(identity, plan, cwd, digest, env)
    except (Uncacheable, OSError):
        return scan()
    found = cache.lookup(key, cwd, named, seen)
    if found is None:
        seen.clear()     # looked at before the scan: the scan may have read newer content
        found = scan()
        cache.store(key, plan, cwd, found, system, named, started, digest, seen)
        found = dataclasses.replace(found, seen=seen)
    return found


def _dir_stamp(path: str) -> list | None:
    """[mtime, ctime, inode, device] of what `path` names (symlinks followed), None when nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def write_file(path: str, data: bytes) -> None:
    """`path` replaced by `data` (a hit's dependency file: os-level, not through a buffered file object)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def changed_since(ctime_ns: int, started_ns: int) -> bool:
    """Whether a change made at or after `started_ns` could carry this ctime (TICK_NS)."""
    return ctime_ns > started_ns - (RACY_NS if ctime_ns % 1_000_000 == 0 else TICK_NS)


def _kind(entry: os.DirEntry) -> str:
    if entry.is_symlink():
        try:      # a dangling link and a link to a file are found differently
            return "ld" if stat.S_ISDIR(entry.stat().st_mode) else "lf"
        except OSError:
            return "l-"
    return "d" if entry.is_dir(follow_symlinks=False) else "f"


def listing(path: str) -> dict[str, list[list[str]]]:
    """Directory `path`'s entries by casefolded name (a case-insensitive directory finds `A.H` for
    `a.h`): [[name, kind], ...]; OSError when it cannot be listed."""
    by_name: dict[str, list[list[str]]] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            by_name.setdefault(entry.name.casefold(), []).append([entry.name, _kind(entry)])
    return by_name


def wanted(names: set[str]) -> set[str]:
    """The entries a lookup of `names` (casefolded) could open: each, and its precompiled header
    `name.gch` (GCC prefers it)."""
    return names | {name + ".gch" for name in names}


def relevant(by_name: dict[str, list[list[str]]], want: set[str]) -> list[list[str]]:
    """The part of a `listing` a lookup could open (`wanted`), sorted: what the entry keeps."""
    # (set.intersection with a dict goes over the smaller of the two; keys() & want, over the keys.)
    return sorted(entry for name in want.intersection(by_name) for entry in by_name[name])


# An entry keeps a listing's part as one string (names hold no "/"): a lookup parses 23 such a
# c-ares job, a JSON list of pairs each took ~2.3 times as long.
_KIND_CHAR = {"f": "f", "d": "d", "lf": "F", "ld": "D", "l-": "-"}
_CHAR_KIND = {char: kind for kind, char in _KIND_CHAR.items()}


def _kept_text(part: list[list[str]]) -> str:
    """`relevant`'s [[name, kind], ...] as "kname/kname..." (k: the kind's one character)."""
    return "/".join(_KIND_CHAR[kind] + name for name, kind in part)


def _kept_list(text: str) -> list[list[str]]:
    return [[item[1:], _CHAR_KIND[item[0]]] for item in text.split("/")] if text else []


def _climbs(path: str) -> bool:
    return ".." in path.split("/")


def chain_dirs(plan: RemotePlan, cwd: str, system: tuple[str, ...]) -> list[str]:
    """The search directories after the includer's own, in order (absolute, normalised)."""
    ordered = chain_spelt(plan, cwd, system)
    if any(_climbs(d) for d in ordered):
        raise Uncacheable("an include directory with '..'")
    return list(dict.fromkeys(os.path.normpath(os.path.join(cwd, d)) for d in ordered))


def chain_spelt(plan: RemotePlan, cwd: str, system: tuple[str, ...]) -> list[str]:
    """The search directories after the includer's own, in order, as the flags spell them (the
    working directory first; the compiler's own normalised); Uncacheable for the flags that
    move them."""
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
    return [cwd, *found["-iquote"], *found["-I"], *found["-isystem"], *system, *found["-idirafter"]]


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


def _names_or_none(content: bytes) -> list[str] | None:
    """`has_include_names`, None for a computed one (the part FileHashes keeps with the hash)."""
    try:
        return has_include_names(content)
    except Uncacheable:
        return None


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

    def __init__(self, directory: str, clock_ns: Callable[[], int] = time.time_ns, hashes: FileHashes | None = None):
        self.directory = directory
        self._clock_ns = clock_ns
        self.hashes = hashes or FileHashes(clock_ns)   # shared with the request's digests (cli/job_server.py)
        self._lock = threading.Lock()
        self._dirs: dict[str, tuple[list, dict]] = {}   # path -> (stamp, listing)
        self._stores = 0
        self.hits = self.misses = 0
        self.settled = 0     # entries rewritten with their racy directories' stamps settled

    @staticmethod
    def key(identity: str, plan: RemotePlan, cwd: str, source_sha256: str, env: dict) -> str:
        if any(env.get(name) for name in DOUBT_ENV):
            raise Uncacheable("CPATH-style variables add include directories")
        material = [VERSION, identity, plan.scan_argv(), os.path.abspath(cwd), source_sha256,
                    [[name, env.get(name)] for name in KEY_ENV]]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".json")

    def _file(self, path: str, seen: Seen | None = None) -> Hashed:
        """(stamp, sha256, __has_include names: None for a computed one) of a file, stat'ed now, read
        once per settled stamp (cli/file_hashes.py); OSError when it changed while read."""
        return self.hashes.look_all([path], _names_or_none, seen)[0]

    def _listing(self, path: str, stamp: list) -> dict[str, list[list[str]]]:
        """`listing(path)` as of `stamp`, listed once per settled stamp; OSError when it is no
        directory or changed while listed."""
        with self._lock:
            known = self._dirs.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        by_name = listing(path)
        if _dir_stamp(path) != stamp:
            raise OSError(f"{path} changed while listed")
        if self._clock_ns() - stamp[1] > RACY_NS:
            with self._lock:
                self._dirs[path] = (stamp, by_name)
        return by_name

    def lookup(self, key: str, cwd: str, depfile: str | None, seen: Seen | None = None) -> Scan | None:
        """The cached scan, its dependency file written (`depfile`: as the argv names it), or None.
        `seen` gets the files looked at (their stamps taken now)."""
        try:
            with open(self._path(key), "rb") as f:
                entry = json.loads(f.read())
            if entry.get("v") != VERSION or entry.get("depfile") != depfile:
                raise ValueError("another entry")
            settled = self._probes_hold(entry)
            # The file's sha256 now (hashed again unless its stamp is a settled one seen in this run):
            # an entry's stamp alone could be racy.
            paths = entry["paths"].split("\0")
            found = self.hashes.look_all(paths, _names_or_none, seen)
            if "".join([hashed.sha256 for hashed in found]) != entry["sha256"]:
                raise ValueError("a header changed")
            headers = entry["headers"]
            headers = tuple(paths[:headers] if isinstance(headers, int) else headers)
            if depfile is not None:
                write_file(os.path.join(cwd, depfile), base64.b64decode(entry["d"]))
        except (OSError, ValueError, KeyError, TypeError):
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        if settled:
            self._settle(key, entry, settled)
        return Scan(headers=headers, seen={} if seen is None else seen)

    def _probes_hold(self, entry: dict) -> dict[int, list]:
        """ValueError unless every probed directory is as the scan found it: its settled stamp
        the same, else (a racy stamp, or one that moved) its entries a lookup could open the
        same. Returns those listed whose stamp is settled now (index -> stamp, the same before
        and after the listing): stamps that may replace theirs in the entry."""
        now = self._clock_ns()
        settled = {}
        want = None
        for i, (path, stamp, kept, racy) in enumerate(entry["probes"]):
            current = _dir_stamp(path)
            if current == stamp and not racy:
                continue
            if kept is None or current is None:
                raise ValueError("a directory changed")
            if want is None:
                want = wanted(set(filter(None, entry["names"].split("/"))))
            kept = _kept_list(kept)    # (kept as text: parsed only by a lookup that lists)
            if relevant(listing(path), want) != kept:
                raise ValueError("a directory gained or lost a header's name")
            if now - current[1] > RACY_NS and all(kind != "l-" for _, kind in kept) \
                    and _dir_stamp(path) == current:
                settled[i] = current
        return settled

    def _settle(self, key: str, entry: dict, settled: dict[int, list]) -> None:
        """Rewrite the entry with the settled stamps (the next lookups stat, not list, them)."""
        for i, stamp in settled.items():
            entry["probes"][i][1:] = [stamp, entry["probes"][i][2], 0]
        try:
            self._write(key, json.dumps(entry).encode())
        except OSError:
            return
        with self._lock:
            self.settled += 1

    def now_ns(self) -> int:
        return self._clock_ns()

    def source_sha256(self, path: str, seen: Seen | None = None) -> str:
        return self._file(path, seen)[1]

    def store(self, key: str, plan: RemotePlan, cwd: str, found: Scan, system: tuple[str, ...],
              depfile: str | None, started_ns: int, source_sha256: str | None = None,
              seen: Seen | None = None) -> None:
        """Remember `found` (scanned from `started_ns` on, the source's sha256 in `key` being
        `source_sha256`); silently not, on any doubt. `seen` gets the files looked at."""
        try:
            self._store(key, plan, cwd, found, system, depfile, started_ns, source_sha256, seen)
        except (Uncacheable, OSError, ValueError):
            pass

    def _store(self, key, plan, cwd, found, system, depfile, started_ns, source_sha256, seen) -> None:
        cwd = os.path.abspath(cwd)
        chain = chain_dirs(plan, cwd, system)
        source = os.path.normpath(os.path.join(cwd, plan.source))
        if _climbs(plan.source):
            raise Uncacheable("a source named with '..'")
        probes = probe_dirs(source, found.tree, chain)
        files = []
        opened: set[str] = set()   # the names a lookup opens in some directory, casefolded
        # GCC includes stdc-predef.h unnamed (cli/compile_scan.py); its directory is probed as a chain's.
        predefined = [os.path.join(d, n) for d in system for n in PREINCLUDED if os.path.isfile(os.path.join(d, n))]
        for path in (source, *found.headers, *predefined[:1]):
            stamp, digest, names = self._file(path, seen)
            if names is None:
                raise Uncacheable(f"{path}: a __has_include of a computed name")
            # Changed since the scan started: the scan may have read other content.
            if changed_since(stamp[2], started_ns):
                raise Uncacheable(f"{path} changed after the scan started")
            if path == source and source_sha256 is not None and digest != source_sha256:
                raise Uncacheable("the source changed after it was hashed")
            for name in names:
                if _climbs(name) or os.path.isabs(name):
                    raise Uncacheable("a __has_include of a path")
                opened.add(os.path.basename(name).casefold())
                for base in [os.path.dirname(path), *chain]:
                    probes.append(os.path.normpath(os.path.join(base, os.path.dirname(name))))
            if path != source:
                files.append((path, digest))
                opened.add(path.rpartition("/")[2].casefold())
        stamped = self._stamp_probes(list(dict.fromkeys(probes)), opened, started_ns)
        d = b""
        if depfile is not None:
            with open(os.path.join(cwd, depfile), "rb") as f:
                d = f.read()
        # Compact (a lookup parses it: ~45 kB a c-ares job): the files' paths as one string and their
        # digests as another, the headers as a count of those paths when they are its first ones.
        paths = [path for path, _ in files]
        headers = len(found.headers) if paths[:len(found.headers)] == list(found.headers) else list(found.headers)
        entry = {"v": VERSION, "headers": headers, "paths": "\0".join(paths),
                 "sha256": "".join(digest for _, digest in files), "probes": stamped,
                 "names": "/".join(sorted(opened)), "depfile": depfile, "d": base64.b64encode(d).decode()}
        self._write(key, json.dumps(entry).encode())

    def _stamp_probes(self, probes: list[str], opened: set[str], started_ns: int) -> list:
        """The entry's probes: [path, stamp, the entries a lookup could open in it (as JSON text), racy], and
        `opened` completed (the names a lookup opens, casefolded).

        A probe that does not exist (most: a c-ares job probes ~250 such, <sys/x.h> in each
        include directory) is not stamped itself: its nearest existing ancestor stands for it
        when the missing name under it is not there at all (a dangling symlink or a file in
        the way: the probe is stamped itself, None). A directory whose entries do not change
        keeps a missing name missing, so a lookup stats ~25 directories instead of ~275.
        Each directory keeps `relevant` of its listing (each header's name, each first missing
        name), which a lookup compares when the stamp moved, or always while it is racy
        (changed within RACY_NS before the scan started, or with a dangling symlink named as a
        header); one changed after the scan started is not stored (the scan may have seen
        other entries)."""
        stamps: dict[str, list | None] = {}
        listings: dict[str, dict | None] = {}    # existing path -> its listing, None: no directory

        def stamp_of(path: str) -> list | None:
            if path not in stamps:
                stamps[path] = _dir_stamp(path)
            return stamps[path]

        def listing_of(path: str) -> dict | None:
            if path not in listings:
                try:
                    listings[path] = self._listing(path, stamps[path])
                except NotADirectoryError:
                    listings[path] = None
            return listings[path]

        anchors: dict[str, dict[str, list[str]]] = {}   # existing path -> {missing name: probes it stands for}
        missing_at: dict[str, tuple[str, str]] = {}   # missing path -> (existing ancestor, first missing name)
        entries = []
        for path in probes:
            # (Absolute and normalised: rpartition is dirname and basename, at a third of the cost.)
            parent, _, name = path.rpartition("/")
            parent = parent or "/"
            known = listings.get(parent)
            if known is not None and name.casefold() not in known:   # missing, and no stat to say so
                at = (parent, name)
            elif parent in missing_at:                               # under a missing directory
                at = missing_at[parent]
            elif stamp_of(path) is not None:
                anchors.setdefault(path, {})
                listing_of(path)
                continue
            else:
                while parent != "/" and stamp_of(parent) is None:
                    parent, _, name = parent.rpartition("/")
                    parent = parent or "/"
                if stamp_of(parent) is None:
                    entries.append([path, None, None, 0])
                    continue
                at = (parent, name)
            missing_at[path] = at
            anchors.setdefault(at[0], {}).setdefault(at[1], []).append(path)
        probed = set(probes)
        kept = []
        for path, missing in anchors.items():
            stamp = stamps[path]
            by_name = listing_of(path)
            if missing:
                stands_for = False
                for name, stood_for in missing.items():
                    if by_name is None or name.casefold() in by_name:   # a dangling symlink, a file
                        entries.extend([p, None, None, 0] for p in stood_for)
                    else:
                        stands_for = True
                opened.update(name.casefold() for name in missing)
                if not stands_for and path not in probed:
                    continue
            if changed_since(stamp[1], started_ns):
                raise Uncacheable(f"{path} changed after the scan started")
            kept.append((path, stamp, by_name))
        want = wanted(opened)
        for path, stamp, by_name in kept:
            if by_name is None:
                entries.append([path, stamp, None, 0])
                continue
            part = relevant(by_name, want)
            # A dangling symlink named as a header would shadow it once its target appears, and
            # the directory's stamp would not move: such a directory is listed at each lookup.
            racy = started_ns - stamp[1] <= RACY_NS or any(kind == "l-" for _, kind in part)
            entries.append([path, stamp, _kept_text(part), int(racy)])
        return entries

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
