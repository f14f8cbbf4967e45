"""The initiator ships its compiler to helpers that lack it (docs/design.md section 8).

Icecream's way (icecc-create-env), without its chroot: `pack` puts the
compiler's files (agent.compile_job.compiler_programs: the driver, cc1,
cc1plus, as), the driver's specs file when it has one, every shared library
they load as the dynamic loader resolves them (ldd) and that loader into
one tar archive (the layout agent/toolchain_store.py reads and checks).
`Shipper` packs once per compiler identity and build, and sends the archive
once per helper (Helper.Toolchain, in chunks) when a helper answers a job
with `toolchain_wanted`; the job is then sent again. A compiler that cannot
be shipped (not an ELF GCC driver, a library ldd does not find, an archive
over the limit) or a helper that refuses the archive leaves the jobs local,
as before.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
import threading
from typing import Callable, Iterator

from agent.compile_job import CLEAN_ENV, compiler_programs, identity_of
from agent.toolchain_store import MAX_ARCHIVE_BYTES
from cluster.protocol import compile_pb2 as pb

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


def pack(compiler: str, out: str) -> str:
    """Write the archive of `compiler` to `out`; its identity (as compiler_identity computes it)."""
    programs = compiler_programs(compiler)
    roles = dict(programs)
    if "cc1" not in roles or "as" not in roles:
        raise Unshippable("not a GCC driver (no cc1 and as of its own)")
    paths = [path for _, path in programs]
    if not all(_elf(p) for p in paths):
        raise Unshippable("its driver or programs are not ELF executables (a script runs other programs)")
    libraries, loader = shared_libraries(paths)
    members = [(f"driver/{os.path.basename(roles['driver'])}", roles["driver"])]
    members += [(f"progs/{role}", path) for role, path in programs if role != "driver"]
    tools = [[member, os.path.basename(path)] for member, path in members]
    specs = subprocess.run([roles["driver"], "-print-file-name=specs"], capture_output=True, text=True,
                           timeout=10, env=CLEAN_ENV).stdout.strip()
    if os.path.isabs(specs) and os.path.isfile(specs):
        members.append(("progs/specs", specs))
    members += [(f"lib/{name}", path) for name, path in sorted(libraries.items())]
    loader_member = f"lib/{os.path.basename(loader)}"
    members.append((loader_member, loader))
    manifest = json.dumps({"tools": tools, "loader": loader_member}).encode()
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for member, path in members:
            tar.add(path, arcname=member, recursive=False)
    if os.path.getsize(out) > MAX_ARCHIVE_BYTES:
        raise Unshippable(f"its archive is over {MAX_ARCHIVE_BYTES} bytes")
    return identity_of((os.path.basename(path), path) for _, path in programs)


def chunks(grant: pb.Grant, identity: str, archive: str) -> Iterator[pb.ToolchainChunk]:
    yield pb.ToolchainChunk(grant=grant.grant, epoch=grant.epoch, identity=identity)
    with open(archive, "rb") as f:
        for data in iter(lambda: f.read(CHUNK), b""):
            yield pb.ToolchainChunk(data=data)


class Shipper:
    """`ship(stub, grant, compiler, identity)` -> "" once the helper has the toolchain, else
    why not. Packs once per identity into `directory`; sends once per (helper, identity), and
    concurrent jobs for the same helper wait for that one send. `sends` counts them."""

    def __init__(self, directory: str):
        self.directory = directory
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

    def _pack(self, compiler: str, identity: str) -> str:
        fd, archive = tempfile.mkstemp(prefix="toolchain-", suffix=".tar.gz", dir=self.directory)
        os.close(fd)
        if pack(compiler, archive) != identity:
            raise Unshippable("the compiler changed while it was packed")
        return archive

    def _send(self, stub, grant: pb.Grant, identity: str, archive: str) -> str:
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
