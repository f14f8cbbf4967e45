"""The initiator's half of a distributed compile: scan, then pack the job.

The way a job's files are found when its include lines cannot be read for
sure (cli/include_scan.py, the first way), or with BATON_INCLUDE_SCAN=0:
`scan(plan, cwd)` runs the compile's own preprocessor once for its
dependencies only (`-M -H`, cli.cc_args.RemotePlan.scan_argv): that writes
the dependency file exactly as the compile would (make and ninja read it)
and names, on stderr, every header the compile reads. `input_paths` lists
the files a helper needs (`baton run` names them by hash:
cli/job_inputs.py); `pack` makes them the `agent.compile_job.CompileJob` a
helper compiles at the same paths, contents included.

The compiler's own include directories come from `compiler -E -v` once per
compiler (they name where the system headers are; the helper compiles with
`-nostdinc` and the shipped copies). GCC also includes `stdc-predef.h` from
them without naming it in `-H`, so it is shipped when present.

What a scan cannot see: a `__has_include` probe of a header that is then
not included. Such a build compiles remotely as if that header were
missing; `baton run --local-only` is the way out (documented in
docs/design.md section 8).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import tempfile
import threading
from typing import Callable, Iterable

from agent.compile_job import PREINCLUDE, CompileJob, flag_paths
from cli.cc_args import RemotePlan

_HEADER_LINE = re.compile(rb"^\.+ (.+)$")
PREINCLUDED = (PREINCLUDE,)


class ScanFailed(Exception):
    """The scan did not succeed (a missing header, a #error): the compile runs locally and
    says so itself, with the compiler's own words."""


class Unshippable(ScanFailed):
    """The scan succeeded, but a header it names by '..' may not be found alike on a helper:
    the compile runs locally (`climbed_alike`)."""


@dataclasses.dataclass(frozen=True)
class Scan:
    headers: tuple[str, ...]     # absolute, normalised, in the order first read
    tree: tuple[tuple[int, str], ...] = ()   # every -H line: (depth - 1, absolute normalised path)
    # path -> cli.file_hashes.Hashed of the files the scan cache looked at in this job
    # (cli/scan_cache.cached_scan): the request's digests take them without a stat.
    seen: dict = dataclasses.field(default_factory=dict, compare=False, repr=False, hash=False)


@functools.lru_cache(maxsize=8)
def system_dirs(compiler: str, language: str) -> tuple[str, ...]:
    """The directories `compiler` searches for <...> includes, in order, spelt as it spells them:
    Clang records /usr/bin/../lib/gcc/<triple>/12/../../../../include/c++/12 so in -g's line
    table, and the helper names them alike (agent.job_root.inside_as_spelt)."""
    done = subprocess.run([compiler, "-x", language, "-E", "-v", "-"], input=b"", capture_output=True,
                          timeout=30)
    text = done.stderr.decode(errors="replace")
    try:
        listed = text.split("#include <...> search starts here:", 1)[1].split("End of search list.", 1)[0]
    except IndexError:
        raise ScanFailed(f"{compiler} does not list its include directories") from None
    return tuple(line.strip() for line in listed.strip().splitlines() if line.strip())


def scan(plan: RemotePlan, cwd: str, timeout: float = 600.0, env: dict | None = None) -> Scan:
    """Run the compile's preprocessor once (in `env`: the compile's own); ScanFailed when it fails.

    Its stderr (the -H list, a line per header) goes to a temporary file, read once at the
    end (a scan killed at `timeout` fails like any other): through a pipe, Python woke for each line (~500 polls and reads a c-ares job, in
    `baton run`, where every wake-up competes for the GIL with the other jobs' threads)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(plan.scan_argv(), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env)
        # Not wait(timeout): that polls with sleeps of up to 50 ms; a timer kills it instead.
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            returncode = proc.wait()
        finally:
            timer.cancel()
        err.seek(0)
        stderr = err.read()
    if returncode != 0:
        raise ScanFailed(stderr.decode(errors="replace")[-2000:])
    tree = []
    for line in stderr.splitlines():
        match = _HEADER_LINE.match(line)
        if match:
            named = os.fsdecode(match.group(1))
            # A '..' stays: the scan cache (cli/scan_cache.py) will not trust such a path.
            path = os.path.join(cwd, named) if ".." in named.split("/") else os.path.normpath(os.path.join(cwd, named))
            tree.append((match.group(0).index(b" ") - 1, path))
    found = Scan(headers=tuple(dict.fromkeys(os.path.normpath(path) for _, path in tree)), tree=tuple(tree))
    climbed_alike(plan, cwd, found)
    return found


def parent_is_textual(directory: str) -> bool | None:
    """Whether '..' out of `directory` (absolute, normalised, not '/') is its textual parent
    (os.path.dirname), the same directory by device and inode: True; False: another one (a
    symlink on the way) or it cannot be told; None: `directory` is no directory here."""
    try:
        up = os.stat(directory + "/..")
    except (NotADirectoryError, FileNotFoundError):
        return None
    except OSError:
        return False
    try:
        textual = os.stat(os.path.dirname(directory))
    except OSError:
        return False
    return (up.st_dev, up.st_ino) == (textual.st_dev, textual.st_ino)


def climbed_out_of(cwd: str, path: str, parent: Callable[[str], bool | None] = parent_is_textual) -> list[str]:
    """The directories the '..' parts of `path` (from `cwd` when relative) climb out of;
    Unshippable when one climbs above '/' (on a helper, out of the job root) or out of a
    directory whose '..' is not its textual parent (`parent(directory)` not True: a symlink on
    the way, or no directory here). Then the compiler here opens what the normalised path
    names, and so does a helper, whose job root holds only directories and hard links."""
    out: list[str] = []
    if ".." not in path.split("/"):
        return out
    where = "/" if os.path.isabs(path) else os.path.normpath(cwd)
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            where = os.path.join(where, part)
            continue
        if where == "/":
            raise Unshippable(f"{path!r} climbs above /")
        up = parent(where)
        if up is not True:
            raise Unshippable(f"{path!r}: '..' out of {where}, " + (
                "no directory here" if up is None else f"not {os.path.dirname(where)} here (a symbolic link)"))
        out.append(where)
        where = os.path.dirname(where)
    return out


def on_helper(cwd: str, files: Iterable[str], made: Iterable[str] = ()) -> set[str]:
    """The directories a helper has for a job of `files` (absolute, normalised): the working
    directory and those above it, those holding a file and those above them, and `made` (the
    ones a relative path's '..' climbs out of: agent.compile_job makes them)."""
    have: set[str] = set(made)
    for start in (os.path.normpath(cwd), *(os.path.dirname(path) for path in files)):
        directory = start
        while directory not in have:
            have.add(directory)
            directory = os.path.dirname(directory)
    return have


def climbed_alike(plan: RemotePlan, cwd: str, found: Scan) -> None:
    """Unshippable unless each file the scan names with '..' (`../include/x.h`, found through
    -I../include or `#include "../x.h"`) is found alike on a helper, which is sent it at its
    normalised path and keeps relative paths as spelt: each '..' of those files, of the source
    and of the flags' paths climbs out of a directory as `climbed_out_of` allows, and the
    directories the files' '..' climb out of are on the helper (`on_helper`: else the compiler
    there finds nothing in them, or a later match)."""
    known: dict[str, bool | None] = {}   # each directory looked at once (Clang spells ~100 headers with '..')

    def parent(directory: str) -> bool | None:
        if directory not in known:
            known[directory] = parent_is_textual(directory)
        return known[directory]

    climbed = {where for _, path in found.tree for where in climbed_out_of(cwd, path, parent)}
    paths = (plan.source, *flag_paths(plan.flags))
    if not climbed and ".." not in "/".join(paths).split("/"):
        return
    for path in paths:
        if os.path.isabs(path):   # checked; the helper normalises them (agent.job_root.inside)
            climbed_out_of(cwd, path, parent)
    # The helper makes the directories a relative path's '..' climbs out of, and a system
    # directory's (Clang's /usr/bin/../lib/gcc/...: agent.job_root.JobRoot.spelt).
    relative = [path for path in paths if not os.path.isabs(path)]
    made = [where for path in (*relative, *system_dirs(plan.compiler, plan.language))
            for where in climbed_out_of(cwd, path, parent)]
    source = os.path.normpath(os.path.join(cwd, plan.source))
    lacking = sorted(climbed - on_helper(cwd, (source, *found.headers), made))
    if lacking:
        raise Unshippable(f"a '..' climbs out of {lacking[0]}, which holds none of the job's files")


def input_paths(plan: RemotePlan, cwd: str, found: Scan) -> list[str]:
    """Every file the compile reads: the source, the headers, and what GCC includes unasked."""
    paths = [os.path.normpath(os.path.join(cwd, plan.source)), *found.headers]
    for directory in system_dirs(plan.compiler, plan.language):
        for name in PREINCLUDED:
            candidate = os.path.normpath(os.path.join(directory, name))
            if os.path.isfile(candidate):
                paths.append(candidate)
                break
    return list(dict.fromkeys(paths))


def pack(plan: RemotePlan, cwd: str, found: Scan) -> CompileJob:
    """The job with every file's content (the initiator sends most by hash: cli/job_inputs.py)."""
    dirs = system_dirs(plan.compiler, plan.language)
    paths = input_paths(plan, cwd, found)
    files = {}
    for path in paths:
        with open(path, "rb") as f:
            files[path] = f.read()
    return CompileJob(args=plan.flags, source=plan.source, cwd=os.path.abspath(cwd), files=files,
                      system_dirs=dirs)
