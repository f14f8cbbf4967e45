"""Shipping Clang (cli/toolchain.py, agent/toolchain_store.py, docs/design.md section 8): the
driver, libLLVM and libclang-cpp (the compiler, and in its identity), as and the resource
share/ files, run under the shipped loader; the objects are the initiator's, -g included."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from agent.compile_job import CompileJob, compiler_identity, compiler_programs, run_compile
from agent.toolchain_store import ToolchainRefused, ToolchainStore
from cli.compile_scan import system_dirs
from cli.initiator import JobServer
from cli.toolchain import pack
from tests.harness.compilers import other_clang
from tests.test_toolchain import Cores, helpers  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not (shutil.which("clang") and shutil.which("ldd")),
                                reason="needs clang and ldd (.ci/run installs Debian's clang)")
C_SOURCE = b'#include <stdio.h>\n#include <stddef.h>\nstruct s { char c; long l; };\n' \
           b'static int g(int x) { return x * 3; }\n' \
           b'int f(int x) { printf("%d", x); return g(x) + (int)offsetof(struct s, l); }\n'
CXX_SOURCE = b'#include <vector>\n#include <string>\n' \
             b'int f(int n) { std::vector<std::string> v(n, "x"); return (int)v.size(); }\n'


@pytest.fixture(scope="module")
def clang(tmp_path_factory):
    """(another clang's driver, its archive, its identity)."""
    where = tmp_path_factory.mktemp("clang")
    driver = other_clang(where / "llvm")
    identity = pack(str(driver), str(where / "toolchain.tar.gz"))
    return driver, where / "toolchain.tar.gz", identity


def job_files(compiler: str, flags: list[str], source: str, cwd: Path) -> dict[str, bytes]:
    """Every file the compile reads (clang -M), by absolute path: what the initiator sends."""
    deps = subprocess.run([compiler, *flags, "-M", source], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout
    paths = deps.replace("\\\n", " ").split()[1:]
    return {os.path.abspath(os.path.join(cwd, p)): Path(cwd, p).read_bytes() for p in paths}


def test_clangs_identity_covers_the_libraries_it_compiles_with():
    ldd = subprocess.run(["ldd", shutil.which("clang")], capture_output=True, text=True).stdout
    if "libclang-cpp" not in ldd or "libLLVM" not in ldd:
        pytest.skip("this clang is linked statically: its driver is the compiler")
    roles = [role for role, _ in compiler_programs("clang")]
    assert roles[0] == "driver" and any(role.startswith("lib/libLLVM") for role in roles)
    assert "resource/share/asan_ignorelist.txt" in roles


@pytest.mark.parametrize("name, source, flags", [
    ("clang", "a.c", ["-O2", "-g"]),
    ("clang", "a.c", ["-O2", "-g", "-fno-integrated-as"]),   # cc1 and as as programs: under the loader too
    ("clang", "a.c", ["-O2", "-g", "-fno-integrated-cc1"]),   # the driver runs argv[0] -cc1
    ("clang", "a.c", ["-O1", "-g", "-fsanitize=address"]),   # reads the resource dir's ignore list
    ("clang++", "a.cc", ["-O2", "-std=c++17"]),
    ("clang++", "a.cc", ["-O2", "-g", "-std=c++17"]),   # -g records libstdc++'s directory as Clang spells it
    ("clang++", "a.c", ["-O2"]),                               # clang++ compiles a .c file as C++
], ids=["c", "no-integrated-as", "no-integrated-cc1", "asan", "c++", "c++-g", "c-as-c++"])
def test_the_shipped_clang_makes_the_initiators_objects(clang, tmp_path, name, source, flags):
    driver, archive, identity = clang
    assert identity == compiler_identity(str(driver)) != compiler_identity("clang")
    store = ToolchainStore(str(tmp_path / "store"))
    shipped = store.receive(identity, [archive.read_bytes()])
    work = tmp_path / "work"
    work.mkdir()
    (work / source).write_bytes(CXX_SOURCE if source.endswith(".cc") else C_SOURCE)
    local_driver = str(driver.parent / name)
    language = "c++" if name.endswith("++") else "c"
    job = CompileJob(args=tuple(flags), source=source, cwd=str(work),
                     files=job_files(local_driver, flags, source, work),
                     system_dirs=system_dirs(local_driver, language))
    result = run_compile(shipped.command(name), job, workdir=str(tmp_path))
    local = subprocess.run([local_driver, *flags, "-c", source, "-o", "local.o"], cwd=work, check=True,
                           capture_output=True)
    # clang++ warns about a.c (C++ mode); the driver's own messages name it as the job does (clang++),
    # where a local clang++ names the file it resolves to (clang): see agent/toolchain_store.py.
    assert (result.exit_code, result.diagnostics) == (0, local.stderr.replace(b"clang: ", f"{name}: ".encode()))
    assert result.object == (work / "local.o").read_bytes()

    # The shipped libraries are the ones it runs with: without its libclang-cpp it cannot.
    library = next(Path(shipped.lib).glob("libclang-cpp*"), None)
    if library is not None:
        library.write_bytes(b"")
        assert run_compile(shipped.command(name), job, workdir=str(tmp_path)).exit_code != 0


def test_a_clang_whose_libllvm_differs_from_its_identity_is_refused(clang, tmp_path):
    """libLLVM is the compiler: an archive whose libLLVM is not the one hashed is not kept."""
    _, archive, identity = clang
    out = io.BytesIO()
    with tarfile.open(archive, "r:gz") as source, tarfile.open(fileobj=out, mode="w") as tar:
        manifest = json.load(source.extractfile("manifest.json"))
        assert manifest["kind"] == "clang"
        if not any(member.startswith("lib/libLLVM") for member, _ in manifest["tools"]):
            pytest.skip("this clang is linked statically")
        for member in source:
            content = source.extractfile(member).read()
            if member.name.startswith("lib/libLLVM"):
                content = content[:-1] + bytes([content[-1] ^ 1])
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    store = ToolchainStore(str(tmp_path / "store"))
    with pytest.raises(ToolchainRefused, match="hash to"):
        store.receive(identity, [out.getvalue()])
    assert store.identities() == set()


def test_clang_is_shipped_once_per_helper_and_jobs_compile_with_it(clang, helpers, tmp_path):  # noqa: F811
    driver, _, identity = clang
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    jobs = JobServer(str(run_dir), Cores(helpers), wait=1.0).start()
    (tmp_path / "a.c").write_bytes(C_SOURCE)
    job = {"argv": [str(driver), "-O2", "-g", "-c", "a.c", "-o", "a.o"], "cwd": str(tmp_path),
           "env": {"LANG": "C", "PATH": os.environ.get("PATH", "")}}
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(jobs.compile(job))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    subprocess.run([str(driver), "-O2", "-g", "-c", "a.c", "-o", "local.o"], cwd=tmp_path, check=True)
    local = (tmp_path / "local.o").read_bytes()
    assert sorted(reply.get("helper", reply.get("local")) for reply in replies) == ["h0", "h0", "h1", "h1"], replies
    assert all(reply["object"] == local for reply in replies)
    assert jobs.shipper.sends == 2
    assert all(h.service.toolchains.identities() == {identity} for h in helpers)
    jobs.stop()


@pytest.mark.parametrize("kind, tools, why", [
    ("cobol", [["driver/cc", "cc"]], "not a kind"),
    ("clang", [["driver/clang", "clang"], ["progs/cc1", "cc1"]], "not name a Clang driver"),
    ("clang", [["driver/clang", "clang"], ["lib/../driver/clang", "clang"]], "not in the archive"),
])
def test_a_manifest_that_is_not_a_clang_toolchain_is_refused(tmp_path, kind, tools, why):
    out = io.BytesIO()
    files = {"driver/clang": b"x", "driver/cc": b"x", "progs/cc1": b"x", "lib/ld.so": b"x"}
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in {"manifest.json": json.dumps({"kind": kind, "tools": tools,
                                                           "loader": "lib/ld.so"}).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    store = ToolchainStore(str(tmp_path / "store"))
    with pytest.raises(ToolchainRefused, match=why):
        store.receive("0" * 64, [out.getvalue()])
    assert store.identities() == set() and os.listdir(tmp_path / "store") == []
