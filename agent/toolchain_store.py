"""A helper's shipped toolchains: compilers an initiator sent, kept by identity (docs/design.md section 8).

A helper that has no compiler whose files hash to a job's compiler identity
answers `toolchain_wanted`; the initiator then ships its compiler once, as a
tar archive (cli/toolchain.py packs it) of this layout:

    manifest.json   {"kind": "gcc"|"clang", "tools": [[member, name], ...], "loader": member}
    driver/<name>   the driver (tools[0])
    progs/cc1, progs/cc1plus, progs/as, progs/specs   what the driver runs (and reads)
    lib/<soname>    the shared libraries of all of them, and their dynamic loader
                    (Clang: its libLLVM and libclang-cpp are tools too)
    resource/share/<name>   Clang: its resource directory's share/ (tools too)

Nothing of it is trusted: members are plain files at those places only, the
archive and its unpacked size are bounded, and the identity is computed
here from the unpacked tools (agent.compile_job.identity_of, the function
the initiator and every helper use on their own compilers) and must be the
one claimed: a toolchain is used only for jobs naming the identity of its
own files. The libraries and the loader are the initiator's and are not
part of the identity (as for a helper's own compiler).

A shipped compiler runs without chroot (`Shipped.command`): its own loader
runs the driver with its own libraries (`ld.so --library-path lib`), `-B
progs/` makes the driver take the shipped cc1/cc1plus/as before any other,
and `-wrapper` runs those under the same loader and libraries. None of
these flags reaches cc1, so nothing of them is recorded in the object:
objects are byte-identical to the initiator's (tests/test_toolchain.py). A
toolchain without cc1plus gets a progs/cc1plus that fails (/bin/false):
the driver must never fall back to the helper's own.

Clang has no -wrapper and runs cc1 inside the driver, but runs argv[0] -cc1
(and as) as programs when the driver has more than one job
(-fno-integrated-as): `_complete` makes progs/driver and progs/as scripts
that run the driver and as under the shipped loader, and `Shipped.command`
passes `--argv0 names/<the job's compiler name>` (a link to progs/driver:
Clang takes its mode, clang++, from that name), `-no-canonical-prefixes` (so
that it runs argv[0], not /proc/self/exe, the loader) and `-resource-dir`.
The driver's own messages then name it as the job does (clang++:), where a
local clang++ names the file it resolves to (clang:); objects are
byte-identical (tests/test_toolchain_clang.py).

The store is bounded (`max_bytes` unpacked): the least recently used
toolchains not in use are removed when a new one would exceed it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from typing import Iterable, Iterator

from agent.compile_job import identity_of
from agent.job_root import JobRefused

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 256 * 1024 * 1024     # as sent; larger ones are refused
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024   # all members of one archive
MAX_MEMBERS = 512
DEFAULT_STORE_BYTES = 2 * 1024 * 1024 * 1024
PROGS = ("cc1", "cc1plus", "as")
_IDENTITY = re.compile(r"^[0-9a-f]{64}$")
_MEMBER = re.compile(r"^(driver|progs|lib|resource/share)/[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,100}$")
_PLACES = ("driver", "progs", "lib", "resource", "resource/share")
KINDS = ("gcc", "clang")
_INCOMING = ".incoming-"


class ToolchainRefused(ValueError):
    """An archive the helper does not keep, and why."""


class Shipped:
    """One unpacked toolchain under `directory`."""

    def __init__(self, directory: str, manifest: dict):
        self.directory = directory
        self.kind = manifest.get("kind", "gcc")
        self.driver = os.path.join(directory, manifest["tools"][0][0])
        self.loader = os.path.join(directory, manifest["loader"])
        self.lib = os.path.join(directory, "lib")
        self.progs = os.path.join(directory, "progs")

    def command(self, name: str = "") -> list[str]:
        """The argv prefix that runs the shipped driver, which runs the shipped programs.
        `name`: the compiler's name in the job (Clang takes its mode from it: clang++)."""
        loader = [self.loader, "--library-path", self.lib]
        if self.kind == "clang":
            # Clang's argv[0] says what it is (clang, clang++, a target prefix), and cc1 runs in
            # the driver unless it has more than one job (-fno-integrated-as, -fno-integrated-cc1):
            # then it runs argv[0] -cc1 (with -no-canonical-prefixes; else /proc/self/exe, the
            # loader). So argv[0] is names/<name>, a link to the script progs/driver (_complete).
            return [*loader, "--argv0", self._name(name), self.driver, "-no-canonical-prefixes",
                    "-resource-dir", os.path.join(self.directory, "resource"), f"-B{self.progs}/"]
        return [*loader, self.driver, f"-B{self.progs}/", "-wrapper", ",".join(loader)]

    def _name(self, name: str) -> str:
        name = name or os.path.basename(self.driver)
        if not _NAME.match(name):
            raise JobRefused(f"{name[:80]!r} is not a compiler name")
        link = os.path.join(self.directory, "names", name)
        os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.symlink(os.path.join("..", "progs", "driver"), link)
        return link


def _size(directory: str) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(directory) for f in files)


def _unpack(archive: str, into: str) -> dict:
    """Unpack the archive's members into `into` (checked one by one); its manifest."""
    total, members = 0, 0
    manifest = None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                members += 1
                if members > MAX_MEMBERS:
                    raise ToolchainRefused(f"more than {MAX_MEMBERS} members")
                if member.isdir() and member.name.rstrip("/") in _PLACES:
                    continue
                if not member.isfile():
                    raise ToolchainRefused(f"{member.name[:80]!r} is not a plain file")
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise ToolchainRefused(f"unpacked, it exceeds {MAX_UNPACKED_BYTES} bytes")
                source = tar.extractfile(member)
                if member.name == "manifest.json":
                    manifest = json.loads(source.read(1 << 20))
                    continue
                if not _MEMBER.match(member.name):
                    raise ToolchainRefused(f"{member.name[:80]!r} is not a place of a toolchain")
                target = os.path.join(into, member.name)
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                with open(target, "xb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(target, 0o755)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ToolchainRefused):
            raise
        raise ToolchainRefused(f"not a toolchain archive: {exc}") from None
    return _checked(manifest, into)


def _checked(manifest, into: str) -> dict:
    """The manifest if it names a driver and the files of its kind (GCC: cc1 and as; Clang:
    as, libraries, resource files, or nothing more) that are in the archive, and a loader."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tools"), list) or not manifest["tools"]:
        raise ToolchainRefused("no manifest naming the compiler's files")
    kind = manifest.get("kind", "gcc")
    if kind not in KINDS:
        raise ToolchainRefused(f"{str(kind)[:40]!r} is not a kind of compiler shipped here")
    tools = manifest["tools"]
    members = []
    for tool in tools:
        if (not isinstance(tool, list) or len(tool) != 2 or not all(isinstance(t, str) for t in tool)
                or not _MEMBER.match(tool[0]) or not os.path.isfile(os.path.join(into, tool[0]))):
            raise ToolchainRefused(f"the manifest names {str(tool)[:80]} that is not in the archive")
        members.append(tool[0])
    progs = [f"progs/{p}" for p in PROGS]
    if kind == "gcc":
        if (not members[0].startswith("driver/") or any(m not in progs for m in members[1:])
                or members[1:] != sorted(set(members[1:]), key=progs.index) or "progs/cc1" not in members
                or "progs/as" not in members):
            raise ToolchainRefused("the manifest does not name a GCC driver with its cc1 and as")
    elif (not members[0].startswith("driver/") or len(set(members)) != len(members)
          or not all(m == "progs/as" or m.startswith(("lib/", "resource/share/")) for m in members[1:])):
        raise ToolchainRefused("the manifest does not name a Clang driver with its as, libraries and resources")
    loader = manifest.get("loader")
    if (not isinstance(loader, str) or not loader.startswith("lib/") or not _MEMBER.match(loader)
            or not os.path.isfile(os.path.join(into, loader))):
        raise ToolchainRefused("no dynamic loader in the archive")
    return {"kind": kind, "tools": tools, "loader": loader}


def _complete(manifest: dict, into: str) -> None:
    """After the identity check: what the driver must find in progs/ and does not get shipped
    fails (never the helper's own), and Clang's as runs under the shipped loader (Clang has
    no -wrapper): progs/as becomes a script running progs/as.bin so."""
    progs = os.path.join(into, "progs")
    os.makedirs(progs, mode=0o755, exist_ok=True)
    false = shutil.which("false") or "/bin/false"
    wanted = ("cc1plus",) if manifest["kind"] == "gcc" else ("as",)
    for prog in wanted:
        if not os.path.exists(os.path.join(progs, prog)):
            os.symlink(false, os.path.join(progs, prog))
    if manifest["kind"] != "clang":
        return
    os.mkdir(os.path.join(into, "names"), 0o755)
    loader = f'"$here/../lib/{os.path.basename(manifest["loader"])}" --library-path "$here/../lib"'
    scripts = {"driver": f'--argv0 "$0" "$here/../{manifest["tools"][0][0]}"'}
    if not os.path.islink(os.path.join(progs, "as")):
        os.rename(os.path.join(progs, "as"), os.path.join(progs, "as.bin"))
        scripts["as"] = '"$here/as.bin"'
    for name, program in scripts.items():   # members match _MEMBER: nothing to quote
        if os.path.lexists(os.path.join(progs, name)):
            raise ToolchainRefused(f"progs/{name} is made here, not shipped")
        with open(os.path.join(progs, name), "x") as f:
            f.write(f'#!/bin/sh\n# shipped, under the shipped loader and libraries (agent/toolchain_store.py)\n'
                    f'here="${{0%/*}}"\nexec {loader} {program} "$@"\n')
        os.chmod(os.path.join(progs, name), 0o755)


class ToolchainStore:
    """`receive(identity, chunks)` -> Shipped; `using(identity)` -> Shipped or None while a job runs."""

    def __init__(self, directory: str, max_bytes: int = DEFAULT_STORE_BYTES,
                 max_archive: int = MAX_ARCHIVE_BYTES):
        self.directory, self.max_bytes, self.max_archive = directory, max_bytes, max_archive
        os.makedirs(directory, mode=0o711, exist_ok=True)
        os.chmod(directory, 0o711)   # the compile user (nobody) runs the toolchains, lists nothing
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, float]] = {}   # identity -> (bytes, last use)
        self._pinned: dict[str, int] = {}
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(_INCOMING):
                shutil.rmtree(path, ignore_errors=True)
            elif _IDENTITY.match(name) and os.path.isfile(os.path.join(path, "manifest.json")):
                self._entries[name] = (_size(path), os.stat(path).st_mtime)

    def identities(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def _shipped(self, identity: str) -> Shipped:
        path = os.path.join(self.directory, identity)
        with open(os.path.join(path, "manifest.json")) as f:
            return Shipped(path, json.load(f))

    @contextlib.contextmanager
    def using(self, identity: str) -> Iterator[Shipped | None]:
        """The toolchain of `identity` (None: none here), kept while the block runs."""
        with self._lock:
            if identity not in self._entries:
                shipped = None
            else:
                self._entries[identity] = (self._entries[identity][0], time.monotonic())
                self._pinned[identity] = self._pinned.get(identity, 0) + 1
                shipped = True
        if shipped is None:
            yield None
            return
        try:
            yield self._shipped(identity)
        finally:
            with self._lock:
                self._pinned[identity] -= 1
                if not self._pinned[identity]:
                    del self._pinned[identity]

    def receive(self, identity: str, chunks: Iterable[bytes]) -> Shipped:
        """Keep the archive `chunks` make if its compiler's files hash to `identity`;
        ToolchainRefused (nothing kept) otherwise, or when it is too big."""
        if not _IDENTITY.match(identity):
            raise ToolchainRefused("the identity is not a sha256")
        staging = tempfile.mkdtemp(prefix=_INCOMING, dir=self.directory)
        try:
            archive = os.path.join(staging, "archive")
            received = 0
            with open(archive, "wb") as f:
                for chunk in chunks:
                    received += len(chunk)
                    if received > self.max_archive:
                        raise ToolchainRefused(f"the archive exceeds {self.max_archive} bytes")
                    f.write(chunk)
            unpacked = os.path.join(staging, "toolchain")
            os.mkdir(unpacked, 0o755)
            manifest = _unpack(archive, unpacked)
            actual = identity_of((name, os.path.join(unpacked, member)) for member, name in manifest["tools"])
            if actual != identity:
                raise ToolchainRefused(f"its compiler's files hash to {actual[:16]}..., not {identity[:16]}...")
            _complete(manifest, unpacked)
            with open(os.path.join(unpacked, "manifest.json"), "w") as f:
                json.dump(manifest, f)
            os.chmod(os.path.join(unpacked, "manifest.json"), 0o644)
            size = _size(unpacked)
            if size > self.max_bytes:
                raise ToolchainRefused(f"unpacked, it exceeds the store's {self.max_bytes} bytes")
            with self._lock:
                if identity not in self._entries:
                    os.rename(unpacked, os.path.join(self.directory, identity))
                    self._entries[identity] = (size, time.monotonic())
                    log.info("toolchain %s stored (%d bytes sent, %d unpacked)", identity[:16], received, size)
                    self._evict(keep=identity)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._shipped(identity)

    def _evict(self, keep: str) -> None:
        """With the lock held: the least recently used toolchains go while the store exceeds
        max_bytes (never `keep`, nor one a job is using)."""
        total = sum(size for size, _ in self._entries.values())
        for identity, (size, _) in sorted(self._entries.items(), key=lambda e: e[1][1]):
            if total <= self.max_bytes:
                break
            if identity == keep or identity in self._pinned:
                continue
            del self._entries[identity]
            shutil.rmtree(os.path.join(self.directory, identity), ignore_errors=True)
            total -= size
            log.info("toolchain %s removed (the store keeps %d bytes)", identity[:16], self.max_bytes)
