"""A real, unmodified open-source project on the farm (docs/design.md section 8):
c-ares (CMake + Ninja, ~90 C files, from the pycares sdist that .ci/run fetches;
tests/harness/cares.py) built with `baton run -- cmake --build` on a cluster
of two one-core helper agents. Every object is byte-identical to the one a
local build of the same tree makes (-O2 -g: debug info included), so are the
dependencies ninja read, whether the helpers' compiles wrote them (the files
named by the include lines) or the preprocessor's scans here (also from the
scan cache), and a small program linked against the library runs."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.run import install_wrappers
from tests.e2e.test_run_remote import baton_run
from tests.harness import cares
from tests.harness.wait import wait_until

HERE = Path(__file__).resolve().parent
pytestmark = [
    pytest.mark.slow,
    # A real project's two builds on a shared two-core machine: longer than the suite's 120 s default.
    pytest.mark.timeout(600),
    pytest.mark.skipif(not all(map(shutil.which, ("gcc", "cmake", "ninja"))), reason="needs gcc, cmake and ninja"),
    pytest.mark.skipif(cares.sdist() is None, reason=f"no {cares.ARCHIVE} in {cares.sdist_dir()} "
                       f"(${cares.SDISTS_ENV}): `python3 -m tests.harness.cares fetch` gets it, as .ci/run does"),
]


def objects(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*.o"))}


def dependencies(build: Path) -> str:
    """What ninja read from the .d files (it deletes them): each object's headers, without mtimes."""
    done = subprocess.run(["ninja", "-C", str(build), "-t", "deps"], check=True, capture_output=True, text=True)
    return re.sub(r"deps mtime \d+ \(\w+\)", "deps mtime", done.stdout)


def test_c_ares_builds_on_two_helpers_byte_identical_to_a_local_build_and_its_library_works(make_cluster,
                                                                                            tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    wait_until(lambda: len(cluster.agent_records()) == 2 and all(r.helper for r in cluster.agent_records().values()),
               30, message="two helpers advertised")
    source = cares.unpack(cares.sdist(), tmp_path / "src")
    build = tmp_path / "build"
    # Configured as a developer's tree is: with the wrappers' fixed path as the compiler
    # (what `baton run -- cmake -S ...` records; configured outside it to keep the test short).
    wrappers = install_wrappers(str(tmp_path / "wrappers"))
    env = dict(os.environ, BATON_WRAPPER_DIR=wrappers, CC=os.path.join(wrappers, "cc"))
    cares.configure(source, build, env)
    assert f"CMAKE_C_COMPILER:FILEPATH={wrappers}/cc" in (build / "CMakeCache.txt").read_text()

    # Outside `baton run` the wrapper execs the compiler on PATH: a plain local build.
    subprocess.run(["cmake", "--build", str(build), "-j2"], env=env, check=True, capture_output=True, timeout=600)
    local, local_deps = objects(build), dependencies(build)
    subprocess.run(["cmake", "--build", str(build), "--target", "clean"], env=env, check=True, capture_output=True)
    assert not objects(build) and len(local) > 80

    # The files each job needs named by its include lines (cli/include_scan.py), the .d files
    # written by the helpers' compiles.
    figures, stderr = baton_run(cluster, tmp_path, tmp_path, "cmake", "--build", str(build), "-j2")
    assert (figures["exit_code"], figures["failed"], figures["jobs"]) == (0, 0, len(local)), stderr[-3000:]
    assert figures["remote"] > 0 and set(figures["helpers"]) <= {"a1", "a2"}, stderr[-3000:]
    assert figures["include_scans"] > 0 and figures["scan_cache_misses"] == figures["include_rescans"] == 0, figures
    remote = objects(build)
    assert sorted(remote) == sorted(local)
    assert [name for name in local if remote[name] != local[name]] == []
    assert dependencies(build) == local_deps

    # Scanned by the preprocessor (which writes the .d files here), then again cleaned: the scans
    # come from the cache (cli/scan_cache.py); the same .d files and objects each time.
    for cached in (False, True):
        subprocess.run(["cmake", "--build", str(build), "--target", "clean"], env=env, check=True,
                       capture_output=True)
        figures, stderr = baton_run(cluster, tmp_path, tmp_path, "cmake", "--build", str(build), "-j2",
                                    env={"BATON_INCLUDE_SCAN": "0"})
        assert (figures["exit_code"], figures["failed"], figures["jobs"]) == (0, 0, len(local)), stderr[-3000:]
        assert figures["include_scans"] == 0 and figures["remote"] > 0, figures
        assert (figures["scan_cache_hits"] > 0) == cached, figures
        assert objects(build) == local
        assert dependencies(build) == local_deps

    program = tmp_path / "cares_check"
    subprocess.run(["gcc", "-DCARES_STATICLIB", f"-I{source / 'include'}", f"-I{build}",
                    str(HERE / "data" / "cares_check.c"), str(build / "lib" / "libcares.a"), "-o", str(program)],
                   check=True, capture_output=True)
    ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert ran.stdout == "c-ares 1.34.9: farm.example.org AAAA IN id 4660, 34 bytes\n", ran.stderr
