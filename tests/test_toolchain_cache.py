"""The initiator's cache of packed toolchains (cli/toolchain_cache.py): a second build
sends the archive the first one packed, without packing; a cached archive that is not
what was packed (truncated, corrupt, its record lost) or whose files changed is packed
again and never sent; the cache is private and bounded."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import stat

import grpc
import pytest

import cli.toolchain
from agent.compile_job import compiler_identity
from agent.helper import Grants, HelperServer
from cli.toolchain import Shipper
from cli.toolchain_cache import PackCache, cache_dir
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc

needs_gcc = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("ldd")), reason="needs gcc and ldd")


@pytest.fixture
def packs(monkeypatch, tmp_path):
    """The real packer, counted; the cache in tmp_path/cache (as BATON_CACHE_DIR names it)."""
    calls = []
    real = cli.toolchain.pack

    def counted(compiler, out, *rest):
        calls.append(compiler)
        return real(compiler, out, *rest)

    monkeypatch.setattr(cli.toolchain, "pack", counted)
    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path / "cache"))
    return calls


@pytest.fixture
def helpers(tmp_path):
    """Three real Helper services, each lending grant g<i> at epoch 5, and stubs to them."""
    servers, channels = [], []
    for i in range(3):
        grants = Grants()
        grants.lend(f"g{i}", 1, 5)
        server = HelperServer("127.0.0.1:0", grants, lambda: 5, workers=2, workdir=str(tmp_path / f"helper{i}"))
        server.start()
        servers.append(server)
        channels.append(grpc.insecure_channel(server.address("127.0.0.1")))
    yield [(server, compile_pb2_grpc.HelperStub(channel), pb.Grant(agent=f"h{i}", helper=server.address("127.0.0.1"),
                                                                     grant=f"g{i}", epoch=5))
           for i, (server, channel) in enumerate(zip(servers, channels))]
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop()


def build(tmp_path, name: str, helper) -> None:
    """One `baton run`'s Shipper sending gcc to `helper`, which then keeps it."""
    server, stub, grant = helper
    (tmp_path / name).mkdir()
    identity = compiler_identity("gcc")
    assert Shipper(str(tmp_path / name)).ship(stub, grant, "gcc", identity) == ""
    assert server.service.toolchains.identities() == {identity}


@needs_gcc
def test_a_second_build_sends_the_archive_the_first_one_packed(packs, helpers, tmp_path):
    build(tmp_path, "run1", helpers[0])
    build(tmp_path, "run2", helpers[1])
    assert packs == ["gcc"]
    assert os.path.isfile(os.path.join(cache_dir(), compiler_identity("gcc") + ".tar.gz"))
    assert stat.S_IMODE(os.stat(cache_dir()).st_mode) == 0o700
    assert os.listdir(tmp_path / "run1") == os.listdir(tmp_path / "run2") == []   # nothing packed per build


def truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def flip(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def lose_record(path: str) -> None:
    os.unlink(path[:-len(".tar.gz")] + ".json")


@needs_gcc
@pytest.mark.parametrize("damage", [truncate, flip, lose_record])
def test_a_damaged_cached_archive_is_packed_again_and_never_sent(packs, helpers, tmp_path, damage):
    build(tmp_path, "run1", helpers[0])
    archives = glob.glob(os.path.join(cache_dir(), "*.tar.gz"))
    assert archives == [os.path.join(cache_dir(), compiler_identity("gcc") + ".tar.gz")]
    damage(archives[0])
    # The helper would refuse a damaged archive (it does not hash to the identity, or does not
    # unpack): the build ships, so what it sent was the fresh one.
    build(tmp_path, "run2", helpers[1])
    assert packs == ["gcc", "gcc"]
    with open(archives[0][:-len(".tar.gz")] + ".json") as f:
        record = json.load(f)
    with open(archives[0], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == record["sha256"]
    build(tmp_path, "run3", helpers[2])   # and that one is good again
    assert packs == ["gcc", "gcc"]


class FakePacker:
    """Archives of made-up bytes: `sizes[identity]` bytes, made from `source`."""

    def __init__(self, source, sizes: dict[str, int]):
        self.source, self.sizes, self.runs = source, sizes, []

    def __call__(self, compiler: str, out: str, sources: list) -> str:
        identity = compiler
        self.runs.append(identity)
        with open(out, "wb") as f:
            f.write(identity.encode()[:1] * self.sizes[identity])
        sources.append(str(self.source))
        return identity


def read(packed) -> bytes:
    return os.pread(packed.fd, packed.size + 1, 0)


def test_a_file_the_archive_was_packed_from_that_changed_packs_it_again(tmp_path):
    """Libraries are not part of the identity: an upgraded libmpfr must not leave the old one
    in the archive that is sent."""
    source = tmp_path / "libfake.so"
    source.write_bytes(b"v1")
    a = "a" * 64
    packer = FakePacker(source, {a: 100})
    cache = PackCache(str(tmp_path / "cache"), packer)
    assert read(cache.get(a, a)) == b"a" * 100
    assert read(cache.get(a, a)) == b"a" * 100 and packer.runs == [a]
    source.write_bytes(b"v2, longer")
    assert read(cache.get(a, a)) == b"a" * 100 and packer.runs == [a, a]


def test_the_cache_is_bounded_least_recently_used_out(tmp_path):
    source = tmp_path / "libfake.so"
    source.write_bytes(b"v1")
    a, b, c = ("a" * 64, "b" * 64, "c" * 64)
    packer = FakePacker(source, {a: 1000, b: 1000, c: 1000})
    cache = PackCache(str(tmp_path / "cache"), packer, max_bytes=2500)
    cache.get(a, a)
    cache.get(b, b)
    cache.get(a, a)                     # a is now the more recently used
    held = cache.get(c, c)
    assert sorted(f for f in os.listdir(tmp_path / "cache") if f.endswith(".tar.gz")) == [f"{a}.tar.gz",
                                                                                       f"{c}.tar.gz"]
    assert not (tmp_path / "cache" / f"{b}.json").exists()
    assert read(held) == b"c" * 1000
    cache.get(b, b)
    assert packer.runs == [a, b, c, b]


def test_a_cache_that_is_another_users_or_world_readable_becomes_private(tmp_path):
    (tmp_path / "cache").mkdir(mode=0o755)
    os.chmod(tmp_path / "cache", 0o755)
    PackCache(str(tmp_path / "cache"), FakePacker(tmp_path, {}))
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700


def test_a_compiler_that_is_not_the_identity_asked_for_is_not_kept(tmp_path):
    from cli.toolchain_cache import PackMismatch
    source = tmp_path / "libfake.so"
    source.write_bytes(b"v1")
    a = "a" * 64
    cache = PackCache(str(tmp_path / "cache"), FakePacker(source, {a: 10}))
    with pytest.raises(PackMismatch):
        cache.get(a, "b" * 64)
    assert os.listdir(tmp_path / "cache") == [f"{'b' * 64}.lock"]
    with pytest.raises(ValueError, match="not a compiler identity"):
        cache.get(a, "../../etc/passwd")
