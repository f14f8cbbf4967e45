"""Toolchain shipping (cli/toolchain.py, agent/toolchain_store.py, docs/design.md section 8):
a helper without the initiator's compiler gets it once, checks it by its own hash, keeps
a bounded number of them, and compiles with it to the initiator's objects."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import grpc
import pytest

from agent.compile_job import CompileJob, compiler_identity, identity_of, run_compile
from agent.helper import Grants, HelperServer
from agent.toolchain_store import ToolchainRefused, ToolchainStore
from cli.core_client import CoreSource
from cli.job_server import JobServer
from cli.toolchain import Unshippable, pack
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc
from tests.harness.compilers import other_gcc

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("ldd")), reason="needs gcc and ldd")
SOURCE = b"static int g(int x) { return x * 3; }\nint f(int x) { return g(x) + 42; }\n"


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """(driver of another gcc, its archive, its identity)."""
    where = tmp_path_factory.mktemp("other")
    driver = other_gcc(where / "gcc")
    identity = pack(str(driver), str(where / "toolchain.tar.gz"))
    return driver, where / "toolchain.tar.gz", identity


def local_object(compiler, tmp_path: Path) -> bytes:
    (tmp_path / "a.c").write_bytes(SOURCE)
    subprocess.run([str(compiler), "-O2", "-g", "-c", "a.c", "-o", "local.o"], cwd=tmp_path, check=True)
    return (tmp_path / "local.o").read_bytes()


def test_the_shipped_compiler_makes_the_initiators_objects(other, tmp_path):
    driver, archive, identity = other
    assert identity == compiler_identity(str(driver)) != compiler_identity("gcc")
    store = ToolchainStore(str(tmp_path / "store"))
    shipped = store.receive(identity, [archive.read_bytes()])
    job = CompileJob(args=("-O2", "-g"), source="a.c", cwd=str(tmp_path), files={str(tmp_path / "a.c"): SOURCE},
                     system_dirs=())
    result = run_compile(shipped.command(), job, workdir=str(tmp_path))
    assert (result.exit_code, result.diagnostics) == (0, b"")
    local = local_object(driver, tmp_path)
    assert result.object == local != local_object("gcc", tmp_path)   # its own cc1 ran, not the system's
    assert store.identities() == {identity}


def test_a_toolchain_whose_files_do_not_hash_to_the_claimed_identity_is_refused(other, tmp_path):
    _, archive, _ = other
    store = ToolchainStore(str(tmp_path / "store"))
    with pytest.raises(ToolchainRefused, match="hash to"):
        store.receive(compiler_identity("gcc"), [archive.read_bytes()])   # the helper's own gcc's identity
    assert store.identities() == set() and os.listdir(tmp_path / "store") == []


def test_an_oversized_archive_is_refused_before_it_is_unpacked(other, tmp_path):
    _, archive, identity = other
    store = ToolchainStore(str(tmp_path / "store"), max_archive=1024 * 1024)
    content = archive.read_bytes()
    with pytest.raises(ToolchainRefused, match="exceeds"):
        store.receive(identity, [content[i:i + 65536] for i in range(0, len(content), 65536)])
    assert store.identities() == set() and os.listdir(tmp_path / "store") == []


def tiny_archive(tmp_path: Path, tag: str) -> tuple[str, bytes]:
    """(identity, archive) of a small made-up toolchain (the store checks hashes, not programs)."""
    files = {"driver/gcc": b"driver " + tag.encode() * 5000, "progs/cc1": b"cc1", "progs/as": b"as",
             "lib/ld.so": b"ld"}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        manifest = json.dumps({"tools": [["driver/gcc", "gcc"], ["progs/cc1", "cc1"], ["progs/as", "as"]],
                               "loader": "lib/ld.so"}).encode()
        for name, content in {"manifest.json": manifest, **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    for name, content in files.items():
        (tmp_path / tag).mkdir(exist_ok=True)
        (tmp_path / tag / name.replace("/", "_")).write_bytes(content)
    identity = identity_of((n, str(tmp_path / tag / m.replace("/", "_")))
                           for m, n in (("driver/gcc", "gcc"), ("progs/cc1", "cc1"), ("progs/as", "as")))
    return identity, out.getvalue()


def test_the_store_is_bounded_and_keeps_what_a_job_is_using(tmp_path):
    a, b, c, d = (tiny_archive(tmp_path, tag) for tag in "abcd")
    store = ToolchainStore(str(tmp_path / "store"), max_bytes=2 * 5000 + 2 * 1000)
    store.receive(a[0], [a[1]])
    store.receive(b[0], [b[1]])
    with store.using(a[0]) as shipped:   # a is now the more recently used
        assert shipped is not None
    store.receive(c[0], [c[1]])
    assert store.identities() == {a[0], c[0]}
    assert not (tmp_path / "store" / b[0]).exists()
    with store.using(a[0]):               # in use: kept although the least recently used
        store.receive(d[0], [d[1]])
        assert store.identities() == {a[0], d[0]}
    assert ToolchainStore(str(tmp_path / "store"), max_bytes=store.max_bytes).identities() == {a[0], d[0]}


def test_a_script_driver_is_not_shipped(tmp_path):
    script = tmp_path / "gcc"
    script.write_text("#!/bin/sh\nexec /usr/bin/gcc \"$@\"\n")
    script.chmod(0o755)
    with pytest.raises(Unshippable, match="not ELF"):
        pack(str(script), str(tmp_path / "out.tar.gz"))


class Cores(CoreSource):
    """The grant side of a JobServer: one grant of four slots on each helper."""

    def __init__(self, helpers: list[HelperServer]):
        self.grants = [pb.Grant(agent=f"h{i}", helper=h.address("127.0.0.1"), slots=4, grant=f"g{i}", epoch=5)
                       for i, h in enumerate(helpers)]
        self.next = 0
        self.helpers_used: set[str] = set()
        self.lock = threading.Lock()

    def acquire_core(self, wait):
        with self.lock:
            self.next += 1
            return self.grants[self.next % len(self.grants)], 0, ""

    def release(self, grant, slot=-1):
        pass


@pytest.fixture
def helpers(tmp_path):
    servers = []
    for i in range(2):
        grants = Grants()
        grants.lend(f"g{i}", 4, 5)
        server = HelperServer("127.0.0.1:0", grants, lambda: 5, workers=8, workdir=str(tmp_path / f"helper{i}"))
        server.start()
        servers.append(server)
    yield servers
    for server in servers:
        server.stop()


def test_the_compiler_is_shipped_once_per_helper_and_jobs_compile_with_it(other, helpers, tmp_path):
    driver, _, identity = other
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    jobs = JobServer(str(run_dir), Cores(helpers), wait=1.0).start()
    (tmp_path / "a.c").write_bytes(SOURCE)
    job = {"argv": [str(driver), "-O2", "-g", "-c", "a.c", "-o", "a.o"], "cwd": str(tmp_path),
           "env": {"LANG": "C", "PATH": os.environ.get("PATH", "")}}
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(jobs.compile(job))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    local = local_object(driver, tmp_path)
    assert sorted(reply.get("helper", reply.get("local")) for reply in replies) == ["h0"] * 4 + ["h1"] * 4, replies
    assert all(reply["object"] == local for reply in replies)
    assert jobs.shipper.sends == 2   # once to each helper
    assert all(h.service.toolchains.identities() == {identity} for h in helpers)
    jobs.stop()


def test_a_toolchain_over_the_helpers_limit_is_refused_over_grpc(other, helpers):
    _, archive, identity = other
    helpers[0].service.toolchains.max_archive = 1024 * 1024
    from cli.toolchain import chunks
    with grpc.insecure_channel(helpers[0].address("127.0.0.1")) as channel:
        reply = compile_pb2_grpc.HelperStub(channel).Toolchain(
            chunks(pb.Grant(grant="g0", epoch=5), identity, str(archive)), timeout=60)
    assert "exceeds" in reply.refused
    assert helpers[0].service.toolchains.identities() == set()
