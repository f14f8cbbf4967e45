"""The initiator ships its compiler to helpers that lack it (docs/design.md section 8).

Icecream's way (icecc-create-env), without its chroot: `pack` puts the
compiler's files (agent.compile_job.compiler_programs: GCC's driver, cc1,
cc1plus, as and the driver's specs file when it has one; Clang's driver, as,
libLLVM, libclang-cpp and resource share/ files), every shared library
they load as the dynamic loader resolves them (ldd) and that loader into
one tar archive (the layout agent/toolchain_store.py reads and checks).
`Shipper` takes the archive of each compiler identity once per build from
the user's cache of packed toolchains (cli/toolchain_cache.py: packed there
the first time, checked by hash each time), and sends it
once per helper (Helper.Toolchain, in chunks) when a helper answers a job
with `toolchain_wanted`; the job is then sent again. A compiler that cannot
be shipped (not an ELF GCC or Clang driver, a library ldd does not find, an archive
over the limit) or a helper that refuses the archive leaves the jobs local,
as before.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import tarfile
import threading
from typing import Callable, Iterator

from agent.compile_job import CLEAN_ENV, compiler_programs, identity_of
from agent.toolchain_store import MAX_ARCHIVE_BYTES
from cli.toolchain_cache import DEFAULT_CACHE_BYTES, Packed, PackCache, PackMismatch, cache_dir
from cluster.protocol import compile_pb2 as pb

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SHIP_TIMEOUT = 300.0   # s for one archive to reach a helper
_LDD = re.compile(r"^\s*(\S+)(?:\s+=>\s+(\S+))?\s+\(0x[0-9a-f]+\)\s*$")


class Unshippable(Exception):
    """This compiler cannot be shipped; why."""


def _elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def shared_libraries(paths: list[str]) -> tuple[dict[str, str], str]:
    """({soname: path} of every library the files load, the dynamic loader), from ldd."""
    libraries: dict[str, str] = {}
    loader = None
    for path in paths:
        done = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30, env=CLEAN_ENV)
        if done.returncode != 0:
            raise Unshippable(f"ldd {path}: {done.stderr.strip()[:200] or done.stdout.strip()[:200]}")
        for line in done.stdout.splitlines():
            if "not found" in line:
                raise Unshippable(f"{os.path.basename(path)} needs {line.split()[0]}, which ldd does not find")
            match = _LDD.match(line)
            if match is None:
                continue
            name, resolved = match.groups()
            if resolved is None and os.path.isabs(name):
                loader = name
            elif resolved is not None:
                libraries[name] = os.path.realpath(resolved)
    if loader is None:
        raise Unshippable("its programs name no dynamic loader")
    return libraries, os.path.realpath(loader)


def _kind(driver: str, roles: dict[str, str]) -> str:
    """"gcc" (a driver with its own cc1 and as) or "clang" (a driver that compiles in itself)."""
    if "cc1" in roles:
        if "as" not in roles:
            raise Unshippable("a GCC driver without an as of its own")
        return "gcc"
    version = subprocess.run([driver, "--version"], capture_output=True, text=True, timeout=10,
                             env=CLEAN_ENV).stdout
    if "clang version" in version:
        return "clang"
    raise Unshippable("neither a GCC driver (no cc1 of its own) nor a Clang one")


def pack(compiler: str, out: str, sources: list[str] | None = None) -> str:
    """Write the archive of `compiler` to `out`; its identity (as compiler_identity computes it).
    `sources`: the paths of the files packed are appended to it (cli/toolchain_cache.py).
    GCC: the driver, progs/{cc1,cc1plus,as,specs}; Clang: the driver, progs/as (for
    -fno-integrated-as), its libLLVM / libclang-cpp (also in the identity) and its resource
    directory's share/ (resource/share/: no headers, the job brings those). Both: every
    library ldd resolves for the executables, and the loader."""
    programs = compiler_programs(compiler)
    roles = dict(programs)
    kind = _kind(roles["driver"], roles)
    executables = [path for role, path in programs if "/" not in role]
    if not all(_elf(p) for p in executables):
        raise Unshippable("its driver or programs are not ELF executables (a script runs other programs)")
    libraries, loader = shared_libraries(executables)
    if kind == "clang" and "--argv0" not in subprocess.run([loader, "--help"], capture_output=True, text=True,
                                                            timeout=10, env=CLEAN_ENV).stdout:
        raise Unshippable("its dynamic loader has no --argv0 (glibc before 2.33), which a shipped Clang needs")
    members: dict[str, str] = {}   # member -> path; Clang's libLLVM is a tool and a library
    tools = []
    for role, path in programs:
        member = (f"driver/{os.path.basename(path)}" if role == "driver" else role if "/" in role
                  else f"progs/{role}")
        members[member] = path
        tools.append([member, os.path.basename(path)])
    if kind == "gcc":
        specs = subprocess.run([roles["driver"], "-print-file-name=specs"], capture_output=True, text=True,
                               timeout=10, env=CLEAN_ENV).stdout.strip()
        if os.path.isabs(specs) and os.path.isfile(specs):
            members["progs/specs"] = specs
    for name, path in sorted(libraries.items()):
        members.setdefault(f"lib/{name}", path)
    loader_member = f"lib/{os.path.basename(loader)}"
    members[loader_member] = loader
    manifest = json.dumps({"kind": kind, "tools": tools, "loader": loader_member}).encode()
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for member, path in members.items():
            tar.add(path, arcname=member, recursive=False)
    if os.path.getsize(out) > MAX_ARCHIVE_BYTES:
        raise Unshippable(f"its archive is over {MAX_ARCHIVE_BYTES} bytes")
    if sources is not None:
        sources.extend(members.values())
    return identity_of((os.path.basename(path), path) for _, path in programs)


def chunks(grant: pb.Grant, identity: str, archive: str | Packed) -> Iterator[pb.ToolchainChunk]:
    """The Toolchain stream of `archive` (a path, or a cached archive read at offsets: several
    helpers may be sent the same one at once)."""
    yield pb.ToolchainChunk(grant=grant.grant, epoch=grant.epoch, identity=identity)
    if isinstance(archive, Packed):
        for offset in range(0, archive.size, CHUNK):
            yield pb.ToolchainChunk(data=os.pread(archive.fd, CHUNK, offset))
        return
    with open(archive, "rb") as f:
        for data in iter(lambda: f.read(CHUNK), b""):
            yield pb.ToolchainChunk(data=data)


class Shipper:
    """`ship(stub, grant, compiler, identity)` -> "" once the helper has the toolchain, else
    why not. Takes the archive of each identity once, from the cache of packed toolchains
    (`cache`: cli/toolchain_cache.py's directory; packed there when it has no good one; in
    `directory` for this build only when the cache cannot be made); sends once per (helper,
    identity), and concurrent jobs for the same helper wait for that one send. `sends` counts them."""

    def __init__(self, directory: str, cache: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.directory = directory
        packer = lambda compiler, out, sources: pack(compiler, out, sources)   # noqa: E731 (tests count pack)
        try:
            self.cache = PackCache(cache or cache_dir(), packer, cache_bytes)
        except OSError as exc:
            log.warning("no cache of packed toolchains (%s): packing them for this build only", exc)
            self.cache = PackCache(os.path.join(directory, "toolchains"), packer, cache_bytes)
        self._lock = threading.Lock()
        self._packed: dict[str, tuple[threading.Event, list]] = {}   # identity -> (done, [archive, why])
        self._shipped: dict[tuple[str, str], tuple[threading.Event, list]] = {}   # (helper, identity)
        self.sends = 0

    def _once(self, table: dict, key, work: Callable[[], str]) -> list:
        """[result, why]: `work` run by the first caller for `key`, awaited by the others."""
        with self._lock:
            entry = table.get(key)
            first = entry is None
            if first:
                entry = table[key] = (threading.Event(), [None, ""])
        done, result = entry
        if first:
            try:
                result[0] = work()
            except Unshippable as exc:
                result[1] = str(exc)
            except Exception as exc:   # noqa: BLE001 - e.g. a broken channel: this job stays local,
                result[1] = f"{type(exc).__name__}: {exc}"   # and the next one tries again
                with self._lock:
                    table.pop(key, None)
            finally:
                done.set()
        else:
            done.wait()
        return result

    def _pack(self, compiler: str, identity: str) -> Packed:
        try:
            return self.cache.get(compiler, identity)
        except PackMismatch as exc:
            raise Unshippable(str(exc)) from None

    def _send(self, stub, grant: pb.Grant, identity: str, archive: Packed) -> str:
        with self._lock:
            self.sends += 1
        reply = stub.Toolchain(chunks(grant, identity, archive), timeout=SHIP_TIMEOUT)
        if reply.refused:
            raise Unshippable(f"the helper refused it: {reply.refused}")
        return "sent"

    def ship(self, stub, grant: pb.Grant, compiler: str, identity: str) -> str:
        archive, why = self._once(self._packed, identity, lambda: self._pack(compiler, identity))
        if archive is None:
            return f"cannot ship the compiler: {why}"
        sent, why = self._once(self._shipped, (grant.helper, identity),
                               lambda: self._send(stub, grant, identity, archive))
        return "" if sent else f"cannot ship the compiler to {grant.agent}: {why}"
