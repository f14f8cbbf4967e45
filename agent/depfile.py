"""A helper's dependency file at the initiator's paths, byte for byte.

The helper compiles with the job's -MD/-MMD flags (agent/compile_job.py), so the
compiler writes the .d naming every absolutely named file under the job root.
Taking the root out is not enough: GCC and Clang wrap the rule's line by width
(GCC's libcpp/mkdeps at 72 columns, Clang's DependencyFile at 75, each its own
way), so names shortened by the root would sit on other lines than in a local
compile's file. The rule is therefore read back into its names and written
again as the compiler writes it, without the root.

Which compiler wrote it is not assumed: the names are first written back *with*
the root in each known way, and only a way that gives back the compiler's own
file byte for byte is used; a file no way gives back is not returned (None: the
initiator writes the .d itself, as for a helper that sends none). The -MP phony
rules after the rule are one name a line: only the root is taken out.
"""
from __future__ import annotations

import re

# A name as Make reads it: an escaped space is in it. Runs of plain bytes first: a
# character-by-character alternation took ~0.6 ms on a c-ares .d, this ~0.2.
_NAME = re.compile(rb"(?:[^ \\]+|\\.)+", re.S)
_PLAIN_ROOT = re.compile(rb"[A-Za-z0-9/._+-]+")   # a root the compiler writes unquoted


def _gcc(names: list[bytes], targets: int) -> bytes:
    """libcpp's make_write: a name goes on the next line (" \\\\\\n ") when it would pass column 72."""
    out, col = [], 0
    for i, name in enumerate(names):
        size = len(name) - (i == targets - 1)   # the last target carries the ':', written after the check
        if col:
            if col + size > 72:
                out.append(b" \\\n")
                col = 0
            out.append(b" ")
            col += 1
        out.append(name)
        col += len(name)
    return b"".join(out) + b"\n"


def _clang(names: list[bytes], targets: int) -> bytes | None:
    """Clang's DependencyFileGenerator: targets wrap past 75 with two spaces, a dependency
    wraps when it and a trailing " \\\\" would pass 75. It counts a dependency's unquoted
    length: a quoted one (a '\\\\' or '$' in it) is not rewritten here (None)."""
    out, col = [], 0
    for i, name in enumerate(names):
        if i < targets:
            size = len(name) - (i == targets - 1)
            if col == 0:
                col = size
            elif col + size + 2 > 75:
                out.append(b" \\\n  ")
                col = size + 2
            else:
                out.append(b" ")
                col += size + 1
            col += i == targets - 1
        else:
            if b"\\" in name or b"$" in name:
                return None
            if col + len(name) + 3 > 75:
                out.append(b" \\\n ")
                col = 2
            out.append(b" ")
            col += len(name) + 1
        out.append(name)
    return b"".join(out) + b"\n"


WRITERS = (_gcc, _clang)


def relocated(raw: bytes, root: str, targets: int) -> bytes | None:
    """The .d a local compile writes, from the helper's `raw` one: `root` (the job root)
    taken out of every name and the rule wrapped again as its compiler wraps it; `targets`:
    how many -MT/-MQ targets the rule has. None when no known way wrote `raw`."""
    prefix = root.encode()
    if targets < 1 or not _PLAIN_ROOT.fullmatch(prefix):
        return None
    end = 0
    while True:   # the rule ends at the first line that does not go on (" \\" before its newline)
        end = raw.find(b"\n", end) + 1
        if end == 0:
            return None
        if raw[end - 3:end - 1] != b" \\":
            break
    rule, rest = raw[:end], raw[end:]
    names = _NAME.findall(rule[:-1].replace(b" \\\n", b""))
    if len(names) <= targets or not names[targets - 1].endswith(b":"):
        return None
    local = [name.replace(prefix, b"") for name in names]
    for write in WRITERS:
        if write(names, targets) == rule:
            again = write(local, targets)
            return None if again is None else again + rest.replace(prefix, b"")
    return None
