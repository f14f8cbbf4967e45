"""The files a compile can read, found from the include lines alone: no preprocessor on the initiator.

A cold build's scan (cli/compile_scan.py, `-M -H`) preprocesses every source
once here and the helper preprocesses it again when it compiles: on c-ares
that is ~1.9 s of the ~8.4 s of compiler CPU a build (bench/cold_floor.py).
As distcc's pump mode does, `IncludeScan` reads the `#include` lines
instead and ships a superset of what the compile reads; the helper's own
compile then writes the dependency file (`-MD`, compile.proto dep_flags)
exactly as a local one would, since it opens the same files at the same paths.

A superset is enough, and safe, when for every name a compile may look up,
the job root holds every file that name finds here: then the compiler finds
there what it finds here, whatever order it searches in. So each include
name (and each literal `__has_include` name) is looked up in the includer's
own directory and in every directory of the chain (cli.scan_cache.chain_spelt:
the working directory, -iquote, -I, -isystem, the compiler's own, -idirafter),
and every file it names there is shipped and read in turn: every branch of
every `#if`, `#include_next` included. A name found nowhere is simply not
shipped (it is missing here too, or behind an `#if` not taken).

A '..' (`-I../include`, a source `../src/a.c`, `#include "../common/x.h"`) is
followed textually, and the file shipped at its normalised path: a helper
keeps the spelling and resolves it in its job root, which holds only
directories and hard links. That names what it names here when each
directory a '..' climbs out of has its textual parent as its '..' (no symlink
on the way: `Directories.parent_is_textual`, checked again at each job) and
is on the helper too (the working directory, or one holding a shipped file,
or above them; a relative path's own, which the helper makes).

Not sure means not used (`Unsure`; the caller scans the compile as before):
a computed `#include MACRO`, `#embed`, `#pragma GCC dependency`, a digraph
or trigraph directive, a precompiled header (`.gch`) next to a header, a
match that is neither a file nor a directory, a '..' other than as above
(out of a symlink, above '/', out of a directory the helper lacks, or out
of one missing here towards a file that is here: a helper's root keeps
earlier jobs' directories, empty), `-include`/`-imacros`, the flags and
variables that move the include directories (cli.scan_cache.DOUBT_FLAGS,
DOUBT_ENV). What it cannot see, as the
scan cannot: a `__has_include` hidden behind a macro whose name lacks
"has_include" (docs/design.md section 8). A helper compile that fails is
compiled again here (cli/job_server.py): a missed header costs a local
compile, never a wrong result or a failed build.

Costs: each header is read and parsed once per content (cli/file_hashes.py
keeps the parsed names with its hash); each directory is listed once and,
at each job, stat'ed once to see that it did not change (a directory
changed within RACY_NS of its listing is listed again at each job, as the
scan cache treats a racy stamp); what names resolve to is kept until a
directory changes; each header's reach (it and every file it names, and
theirs) is kept while no directory changed and each of its files' (stamp,
sha256) is the same, so a job resolves only its source's own include lines
and stats each of its files once (~1 ms a c-ares job with the digests,
against ~1.3 ms walking every header's lines at each job). One reach is
walked at a time: a run's first jobs, arriving together, would otherwise
each read, parse and walk the same headers.
"""
from __future__ import annotations

import os
import re
import stat
import threading
import time
from typing import Callable

from cli.cc_args import RemotePlan
from cli.compile_scan import Unshippable, climbed_out_of, on_helper, parent_is_textual
from cli.file_hashes import NOT_DERIVED, FileHashes, Hashed, Seen
from cli.scan_cache import DOUBT_ENV, RACY_NS, Uncacheable, chain_spelt, has_include_names

# A directive line: optionally after a comment's end (`/* ... */ #include`), '#', comments, the keyword.
_DIRECTIVE = re.compile(rb"^(?:[^\n]*\*/)?[ \t]*#[ \t]*(?:/\*[^\n]*?\*/[ \t]*)*"
                        rb"(include_next|include|import|embed)\b([^\n]*)", re.M)
_OPERAND = re.compile(rb"[ \t]*(?:<([^>\n]+)>|\"([^\"\n]+)\")")
# What follows the keyword of a computed include (a macro); anything else (`#include's` in a
# comment) is no directive the compiler could take: if it were one, the compile fails, and a
# failed remote compile is compiled again here.
_COMPUTED = re.compile(rb"[ \t]*(?:/\*|[A-Za-z_$\\])")
_ALTERNATE = re.compile(rb"(?:%:|\?\?=)[ \t]*(?:include|import|embed)")
_DEPENDENCY = re.compile(rb"#[ \t]*pragma[ \t]+GCC[ \t]+dependency")
UNSURE = None   # the parsed names of a file that cannot be read for sure


class Unsure(Exception):
    """The include lines alone cannot tell what this compile reads: scan it."""


def include_names(content: bytes) -> tuple[str, ...] | None:
    """The names a file's include lines and literal `__has_include`s look up, or UNSURE."""
    if not any(word in content for word in (b"include", b"import", b"embed", b"dependency")):
        return ()
    if b"\\\n" in content or b"\\\r\n" in content:   # a directive continued on the next line
        content = content.replace(b"\\\r\n", b"").replace(b"\\\n", b"")
    if _ALTERNATE.search(content) or _DEPENDENCY.search(content):
        return UNSURE
    names = []
    for match in _DIRECTIVE.finditer(content):
        operand = _OPERAND.match(match.group(2))
        if match.group(1) == b"embed" or (operand is None and _COMPUTED.match(match.group(2))):
            return UNSURE
        if operand is None:
            continue
        names.append(os.fsdecode(operand.group(1) or operand.group(2)))
    try:
        names += has_include_names(content)
    except Uncacheable:
        return UNSURE
    return tuple(dict.fromkeys(names))


class _Listing:
    __slots__ = ("stamp", "entries", "settled")

    def __init__(self, stamp: tuple, entries: dict[str, str], settled: bool):
        self.stamp, self.entries, self.settled = stamp, entries, settled


def _stamp(st: os.stat_result) -> tuple:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _kind(entry: os.DirEntry) -> str:
    """'f' a file, 'd' a directory (either through a symlink), 'l' a symlink (looked at again
    at each use: its target can change without its directory's stamp), 'o' anything else."""
    if entry.is_symlink():
        return "l"
    if entry.is_file(follow_symlinks=False):
        return "f"
    return "d" if entry.is_dir(follow_symlinks=False) else "o"


class Directories:
    """What each directory holds, listed once and checked by its stamp at each job. Thread-safe."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns):
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._known: dict[str, _Listing | None] = {}   # None: not a directory (missing, a file)
        self._parents: dict[str, bool | None] = {}     # directory -> parent_is_textual
        self.generation = 0    # moves whenever a listing changed: what names resolve to is stale

    def refresh(self) -> None:
        """Stat every known directory; list again the changed and the racy ones; check each '..'
        known again (a directory above a listed one can become a symlink: no listing changes)."""
        with self._lock:
            known = list(self._known.items())
            parents = list(self._parents.items())
        for path, was in parents:
            now = parent_is_textual(path)
            if now != was:
                with self._lock:
                    self._parents[path] = now
                    self.generation += 1
        for path, was in known:
            if was is None or not was.settled or was.stamp != self._stat_stamp(path):
                now = self._list(path)
                if (now is None) != (was is None) or (now is not None and now.entries != was.entries):
                    with self._lock:
                        self.generation += 1
                with self._lock:
                    self._known[path] = now

    @staticmethod
    def _stat_stamp(path: str) -> tuple | None:
        try:
            return _stamp(os.stat(path))
        except OSError:
            return None

    def _list(self, path: str) -> _Listing | None:
        """Listed between two stats that agree (else not settled: listed again next time)."""
        started = self._clock_ns()
        try:
            before = os.stat(path)
            with os.scandir(path) as found:
                entries = {entry.name: _kind(entry) for entry in found}
            after = _stamp(os.stat(path))
        except (NotADirectoryError, FileNotFoundError):
            return None
        except OSError as exc:
            raise Unsure(f"cannot list {path}: {exc}") from None
        stamp = _stamp(before)
        settled = stamp == after and started - max(before.st_mtime_ns, before.st_ctime_ns) > RACY_NS
        return _Listing(stamp, entries, settled)

    def parent_is_textual(self, directory: str) -> bool | None:
        """Whether '..' out of `directory` (absolute, normalised, not '/') is its textual parent
        (os.path.dirname): True; False: another directory (a symlink on the way); None: it is
        no directory here. Then `directory/../x` names the file normpath names, here and in a
        job root (only directories and hard links: docs/internals.md, compile jobs)."""
        with self._lock:
            known = self._parents.get(directory, False)
        if known is not False:
            return known
        known = parent_is_textual(directory)
        with self._lock:
            self._parents[directory] = known
        return known

    def kind(self, directory: str, name: str) -> tuple[str | None, bool]:
        """What `name` (no '/') is in `directory`: 'f', 'd', 'o' or None (nothing); and whether
        it is a symlink (what it names may change under an unchanged directory)."""
        with self._lock:
            listing = self._known.get(directory, False)
        if listing is False:
            listing = self._list(directory)
            with self._lock:
                self._known[directory] = listing
        if listing is None:
            return None, False
        kind = listing.entries.get(name)
        if kind != "l":
            return kind, False
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            return None, True   # a dangling link: the compiler finds nothing there either
        return ("f" if stat.S_ISREG(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "o"), True


class IncludeScan:
    """`files(plan, cwd, env, system, seen)`: the source and every header the compile may read
    (absolute, normalised), their stamps in `seen`; Unsure when not sure. One per `baton run`."""

    def __init__(self, hashes: FileHashes, clock_ns: Callable[[], int] = time.time_ns):
        self.hashes = hashes
        self.directories = Directories(clock_ns)
        self._lock = threading.Lock()
        # (includer's directory, name, chain) -> (Directories.generation, the files it names, the
        # directories its '..' parts climbed out of to find them: a helper must have those)
        self._found: dict[tuple[str, str, tuple[str, ...]], tuple[int, tuple[str, ...], frozenset[str]]] = {}
        # (header, chain) -> (Directories.generation, the header and every file it reaches, their
        # (stamp, sha256)s, the directories '..' parts climbed out of to find them)
        self._reaches: dict[tuple[str, tuple[str, ...]], tuple[int, tuple[str, ...], tuple, frozenset[str]]] = {}
        self._walking = threading.Lock()   # held by the one thread walking a reach (`_reach`)
        self.used = 0      # compiles scanned this way (the run's summary figures)

    def files(self, plan: RemotePlan, cwd: str, env: dict, system: tuple[str, ...], seen: Seen) -> list[str]:
        if any(env.get(name) for name in DOUBT_ENV):
            raise Unsure("an include path variable is set")
        if any(arg.startswith(("-include", "-imacros")) for arg in plan.flags):
            raise Unsure("-include or -imacros")
        try:
            spelt = chain_spelt(plan, cwd, system)
        except Uncacheable as exc:
            raise Unsure(str(exc)) from None
        self.directories.refresh()
        made = []   # the directories a relative path's '..' climbs out of: the helper makes them
        for path in (plan.source, *spelt):
            try:
                climbed_out = climbed_out_of(cwd, path, self.directories.parent_is_textual)
            except Unshippable as exc:
                raise Unsure(str(exc)) from None
            made += climbed_out if not os.path.isabs(path) else ()
        chain = tuple(dict.fromkeys(os.path.normpath(os.path.join(cwd, d)) for d in spelt))
        generation = self.directories.generation
        source = os.path.normpath(os.path.join(cwd, plan.source))
        # The source's own names, then each header's reach: a build's sources share most of their
        # headers, so a header's tree is walked once, not once a job (the module's Costs).
        order: dict[str, None] = {source: None}
        climbed: set[str] = set()
        for name in _names(source, self._look([source], seen)[0]):
            matches, _, out_of = self._resolve(os.path.dirname(source), name, chain)
            climbed |= out_of
            for match in matches:
                if match not in order:   # else its reach is in `order` already
                    files, out_of = self._reach(match, chain, generation, seen)
                    order.update(dict.fromkeys(files))
                    climbed |= out_of
        _on_helper(climbed, cwd, order, made)
        with self._lock:
            self.used += 1
        return list(order)

    def _reach(self, header: str, chain: tuple[str, ...], generation: int, seen: Seen
               ) -> tuple[tuple[str, ...], frozenset[str]]:
        """`header` and every file its include lines name, and theirs (the superset's rule), with
        the directories '..' parts climbed out of to find them. Kept per (header, chain) while no
        directory listing changed and every file's (stamp, sha256) is as it was; never when a
        symlink was on the way (its target may change under an unchanged directory)."""
        kept = self._kept(header, chain, generation, seen)
        if kept is not None:
            return kept
        # One walk at a time. A run's first jobs arrive together and would each read, parse and
        # walk the same headers (~25-35 ms each on c-ares, a third of a build's include lines);
        # the GIL runs one walk at a time anyway, and the next finds the reach kept or the files
        # parsed. Never held while waiting on anything but this walk's own files.
        with self._walking:
            kept = self._kept(header, chain, generation, seen)
            return kept if kept is not None else self._walk(header, chain, generation, seen)

    def _kept(self, header: str, chain: tuple[str, ...], generation: int, seen: Seen
              ) -> tuple[tuple[str, ...], frozenset[str]] | None:
        with self._lock:
            kept = self._reaches.get((header, chain))
        if kept is not None and kept[0] == generation:
            _, files, hashes, climbed = kept
            if all(now[:2] == was for now, was in zip(self._look(files, seen), hashes)):
                return files, climbed
        return None

    def _walk(self, header: str, chain: tuple[str, ...], generation: int, seen: Seen
              ) -> tuple[tuple[str, ...], frozenset[str]]:
        order: dict[str, None] = {header: None}
        level = [header]
        linked = False
        climbed_out: set[str] = set()
        while level:
            found_next = []
            for path, hashed in zip(level, self._look(level, seen)):   # a level's files at once
                own = os.path.dirname(path)
                for name in _names(path, hashed):
                    matches, link, out_of = self._resolve(own, name, chain)
                    linked = linked or link
                    climbed_out |= out_of
                    for match in matches:
                        if match not in order:
                            order[match] = None
                            found_next.append(match)
            level = found_next
        files, climbed = tuple(order), frozenset(climbed_out)
        if not linked:
            with self._lock:
                self._reaches[(header, chain)] = (generation, files, tuple(seen[f][:2] for f in files), climbed)
        return files, climbed

    def _look(self, paths, seen: Seen) -> list[Hashed]:
        """Each path's Hashed as this job saw it: stat'ed (and read when new) once a job."""
        fresh = [path for path in paths if path not in seen or seen[path].derived is NOT_DERIVED]
        if fresh:
            try:
                self.hashes.look_all(fresh, include_names, seen)
            except OSError as exc:
                raise Unsure(f"cannot read {exc.filename or exc}") from None
        return [seen[path] for path in paths]

    def _resolve(self, own: str, name: str, chain: tuple[str, ...]
                 ) -> tuple[tuple[str, ...], bool, frozenset[str]]:
        """Every file `name` names in `own` or a directory of `chain` (the superset's rule); whether
        a symlink was on the way (then nothing is kept: looked up at each job); and the
        directories a '..' of the name climbed out of to find one (a helper must have them).

        A '..' is followed textually (where the name is spelt `../common/x.h`, the file shipped is
        the normalised one) only out of a directory whose '..' is its textual parent (Unsure
        otherwise). Out of one that is not here, the compiler finds nothing; a helper might (its
        job root keeps earlier jobs' directories, empty): Unsure when the normalised name is a
        file here, which the helper may have been sent."""
        key = (own, name, chain)
        generation = self.directories.generation
        with self._lock:
            kept = self._found.get(key)
        if kept is not None and kept[0] == generation:
            return kept[1], False, kept[2]
        parts = name.split("/")
        if name.startswith("/") or parts[-1] in (".", ".."):
            raise Unsure(f"an include of {name!r}")
        parts = [part for part in parts if part and part != "."]   # a//b.h and a/./b.h are a/b.h
        if not parts:
            raise Unsure(f"an include of {name!r}")
        matches: dict[str, None] = {}
        linked = False
        climbed: set[str] = set()
        for directory in (own, *chain):
            where, missing, out_of = directory, False, []
            for i, part in enumerate(parts[:-1]):
                if part == "..":
                    if where == "/":
                        raise Unsure(f"an include of {name!r} climbs above / from {directory}")
                    if not missing:
                        up = self.directories.parent_is_textual(where)
                        if up is False:
                            raise Unsure(f"an include of {name!r}: '..' out of {where} is not "
                                         f"{os.path.dirname(where)} (a symbolic link on the way)")
                        missing = up is None
                        out_of.append(where)
                    where = os.path.dirname(where)
                    continue
                if not missing:
                    kind, link = self.directories.kind(where, part)
                    linked = linked or link
                    if kind != "d":
                        if ".." not in parts[i + 1:-1]:
                            break
                        missing = True
                where = os.path.join(where, part)
            else:
                kind, link = self.directories.kind(where, parts[-1])
                linked = linked or link
                path = os.path.join(where, parts[-1])
                if missing:
                    if kind in ("f", "o"):
                        raise Unsure(f"an include of {name!r} in {directory}: a '..' out of a directory "
                                     f"that is not here, and {path} is")
                    continue
                if kind == "o":
                    raise Unsure(f"{path} is neither a file nor a directory")
                if self.directories.kind(where, parts[-1] + ".gch")[0] is not None:
                    raise Unsure(f"a precompiled header for {name}")
                if kind == "f":
                    matches[path] = None
                    climbed.update(out_of)
        found = tuple(matches)
        if not linked:    # a symlink's target may change under an unchanged directory: looked at each time
            with self._lock:
                self._found[key] = (generation, found, frozenset(climbed))
        return found, linked, frozenset(climbed)


def _names(path: str, hashed: Hashed) -> tuple[str, ...]:
    """The include names of a file looked at with `include_names`; Unsure when it cannot tell."""
    if hashed.derived is UNSURE:
        raise Unsure(f"{path}: an include line that only the preprocessor can read")
    return hashed.derived


def _on_helper(climbed, cwd: str, files, made: list[str]) -> None:
    """Unsure unless each directory in `climbed` (a '..' of an include name climbed out of it to
    find a file) is on the helper (cli.compile_scan.on_helper): else the name finds nothing
    there, and maybe a later match."""
    lacking = sorted(set(climbed) - on_helper(cwd, files, made)) if climbed else ()
    if lacking:
        raise Unsure(f"a '..' climbs out of {lacking[0]}, which holds none of the job's files")
