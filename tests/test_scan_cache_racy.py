"""The scan cache (cli/scan_cache.py) with stamps taken just after a change ("racy", as git's
racily clean entries): stored, checked by content and listing at each lookup, never a stale hit.

The cache's clock is injected: RACY_NS / 2 ahead, the files this test writes changed half a
second before the scan started (racy); LATER ahead, long before (settled); behind, after."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from cli.cc_args import plan
from cli.compile_scan import input_paths, scan, system_dirs
from cli import scan_cache
from cli.scan_cache import RACY_NS, ScanCache, cached_scan

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
LATER = 10_000_000_000


def racy() -> int:
    return time.time_ns() + RACY_NS // 2


def later() -> int:
    return time.time_ns() + LATER


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "p"
    for d in ("src", "inc1/sub", "inc2/sub", "inc3", "build"):
        (root / d).mkdir(parents=True)
    (root / "src/a.c").write_text('#include "a.h"\n#include <sub/b.h>\n#include <c.h>\nint f(void) { return A + B; }\n')
    (root / "src/a.h").write_text('#include "x.h"\n#define A 1\n')
    (root / "src/x.h").write_text("\n")
    (root / "src/y.h").write_text("#include <stdint.h>\n")
    (root / "inc1/sub/other.h").write_text("\n")
    (root / "inc2/sub/b.h").write_text("#include <stddef.h>\n#define B 2\n")
    (root / "inc3/c.h").write_text("\n")     # found in the last directory: inc1, inc2 probed for c.h
    return root


def argv(root):
    return ["gcc", "-I", str(root / "inc1"), f"-I{root / 'inc2'}", f"-I{root / 'inc3'}", "-O2", "-MD", "-MT",
            "src/a.o", "-MF", "build/a.o.d", "-o", "build/a.o", "-c", "src/a.c"]


def run(cache, root, expect_scan: bool):
    """One job through `cache`; the inputs and the dependency file."""
    decided = plan(argv(root))
    cwd = str(root)
    depfile = root / "build/a.o.d"
    depfile.unlink(missing_ok=True)
    scanned = []

    def scanner():
        scanned.append(1)
        return scan(decided, cwd)

    found = cached_scan(cache, decided, cwd, {"PATH": os.environ["PATH"]}, "gcc-identity",
                        system_dirs(decided.compiler, decided.language), scanner)
    assert bool(scanned) == expect_scan
    return input_paths(decided, cwd, found), depfile.read_bytes()


def entries(cache_dir):
    return [json.loads(p.read_text()) for p in cache_dir.rglob("*.json")]


def frozen_stamps(monkeypatch, *paths):
    """os.stat reports for `paths` what it reports now: as if what follows happened in the same
    timestamp tick (a filesystem whose stamps did not move)."""
    real = os.stat
    kept = {str(p): real(p) for p in paths}

    def stat(path, *args, **kwargs):
        path = os.fspath(path)
        return kept[path] if path in kept and not args and not kwargs else real(path, *args, **kwargs)
    monkeypatch.setattr(scan_cache.os, "stat", stat)


def test_a_scan_of_files_changed_just_before_it_is_stored_and_hits(tmp_path, project):
    """The first build after a configure: fails on the old code (stored nowhere)."""
    cold = run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    [entry] = entries(tmp_path / "cache")
    assert any(racy for _, _, _, racy in entry["probes"])
    warm = ScanCache(str(tmp_path / "cache"), clock_ns=racy)
    assert run(warm, project, expect_scan=False) == cold
    assert warm.settled == 0     # still racy: listed again at the next lookup


def test_a_racy_entry_verified_once_settled_is_rewritten_plain(tmp_path, project):
    cold = run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    cache = ScanCache(str(tmp_path / "cache"), clock_ns=later)
    assert run(cache, project, expect_scan=False) == cold
    assert cache.settled == 1
    [entry] = entries(tmp_path / "cache")
    assert not any(racy for _, _, _, racy in entry["probes"])
    assert run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=False) == cold
    (project / "inc1/sub/b.h").write_text("#define B 4\n")      # the plain stamps still see a change
    paths, _ = run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=True)
    assert str(project / "inc1/sub/b.h") in paths


@pytest.mark.parametrize("same_tick", [False, True])
def test_a_racy_header_rewritten_with_the_same_size_and_mtime_is_a_miss(tmp_path, project, monkeypatch, same_tick):
    run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    header = project / "src/a.h"
    before = os.stat(header)
    if same_tick:
        frozen_stamps(monkeypatch, header)
    header.write_text('#include "y.h"\n#define A 1\n')        # the same size, other headers
    os.utime(header, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.path.getsize(header) == before.st_size
    paths, depfile = run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    assert str(project / "src/y.h") in paths and b"stdint.h" in depfile


@pytest.mark.parametrize("where", ["inc1/sub", "inc1", "inc2"])
@pytest.mark.parametrize("same_tick", [False, True])
def test_a_racy_directory_gaining_a_shadowing_header_is_a_miss(tmp_path, project, monkeypatch, where, same_tick):
    """inc1/sub exists (listed itself); inc2/c.h's probe inc2 exists; inc1/sub's for c.h does not (inc1
    stands for it); `inc1` then gains sub/ with b.h, the others the header itself."""
    shutil.rmtree(project / "inc1/sub") if where == "inc1" else None
    run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    if same_tick:
        frozen_stamps(monkeypatch, project / where)
    shadow = {"inc1/sub": "inc1/sub/b.h", "inc1": "inc1/sub/b.h", "inc2": "inc2/c.h"}[where]
    (project / shadow).parent.mkdir(exist_ok=True)
    (project / shadow).write_text("#define B 4\n")
    paths, depfile = run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    assert str(project / shadow) in paths and shadow.encode() in depfile


@pytest.mark.parametrize("clock", [racy, later])
def test_a_directory_gaining_an_unrelated_file_still_hits(tmp_path, project, clock):
    """Ninja creates .ninja_log in the build directory after its first compile, a configure
    renames files there: the stamp moves, the names a lookup opens stay. Fails on the old code."""
    cold = run(ScanCache(str(tmp_path / "cache"), clock_ns=clock), project, expect_scan=True)
    (project / ".ninja_log").write_text("")
    (project / "inc1/sub/unrelated.h").write_text("")
    assert run(ScanCache(str(tmp_path / "cache"), clock_ns=clock), project, expect_scan=False) == cold


def test_a_precompiled_header_appearing_in_a_racy_directory_is_a_miss(tmp_path, project):
    run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)
    (project / "src/a.h.gch").write_bytes(b"not a pch")   # gcc checks it, then falls back to a.h
    run(ScanCache(str(tmp_path / "cache"), clock_ns=racy), project, expect_scan=True)


def test_a_source_changed_after_it_was_hashed_is_not_stored(tmp_path, project):
    decided = plan(argv(project))
    cache = ScanCache(str(tmp_path / "cache"), clock_ns=later)
    found = scan(decided, str(project))
    cache.store("ab" * 32, decided, str(project), found, system_dirs("gcc", "c"), "build/a.o.d",
                later() - LATER // 2, source_sha256="0" * 64)
    assert entries(tmp_path / "cache") == []


@pytest.mark.parametrize("racy_clock", [False, True])
def test_a_dangling_symlink_named_as_a_header_whose_target_appears_is_a_miss(tmp_path, project, racy_clock):
    """inc1/sub/b.h dangles (gcc goes on to inc2's): its target appearing shadows inc2's without
    moving inc1/sub's stamp. Fails on the old code, settled."""
    (tmp_path / "t").mkdir()             # probed by no lookup
    os.symlink(tmp_path / "t/b.h", project / "inc1/sub/b.h")
    clock = racy if racy_clock else later
    run(ScanCache(str(tmp_path / "cache"), clock_ns=clock), project, expect_scan=True)
    (tmp_path / "t/b.h").write_text("#define B 6\n")
    paths, _ = run(ScanCache(str(tmp_path / "cache"), clock_ns=clock), project, expect_scan=True)
    assert str(project / "inc1/sub/b.h") in paths


def test_a_dangling_symlink_in_place_of_a_missing_directory_is_stamped_itself(tmp_path, project):
    """inc1 has no sub/ but a dangling link named sub: inc1 cannot stand for inc1/sub."""
    shutil.rmtree(project / "inc1/sub")
    (tmp_path / "t").mkdir()             # probed by no lookup
    os.symlink(tmp_path / "t/elsewhere", project / "inc1/sub")
    run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=True)
    (tmp_path / "t/elsewhere").mkdir()
    (tmp_path / "t/elsewhere/b.h").write_text("#define B 7\n")
    paths, _ = run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=True)
    assert str(project / "inc1/sub/b.h") in paths


def test_a_settled_entry_stamps_existing_directories_only(tmp_path, project):
    """The missing probes (sub/ under src/ and inc3/...) are stood for by their existing
    ancestors, and a shadowing header under a new subdirectory there is a miss."""
    cold = run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=True)
    [entry] = entries(tmp_path / "cache")
    assert all(stamp is not None for _, stamp, _, _ in entry["probes"])
    assert str(project / "src/sub") not in [path for path, *_ in entry["probes"]]
    assert run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=False) == cold
    shutil.rmtree(project / "inc1/sub")
    cold = run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=True)
    assert run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=False) == cold
    (project / "inc1/sub").mkdir()
    (project / "inc1/sub/b.h").write_text("#define B 8\n")
    paths, _ = run(ScanCache(str(tmp_path / "cache"), clock_ns=later), project, expect_scan=True)
    assert str(project / "inc1/sub/b.h") in paths


def test_a_ctime_in_whole_milliseconds_keeps_the_old_second_of_doubt():
    """A coarse filesystem (ext3: seconds, FAT) may stamp a change made after the scan started up
    to a tick earlier: TICK_NS would not cover it."""
    ctime = 1_700_000_000_123_456_789
    assert not scan_cache.changed_since(ctime, ctime + 500_000_000)
    assert scan_cache.changed_since(ctime, ctime + 50_000_000)
    coarse = 1_700_000_000_000_000_000
    assert scan_cache.changed_since(coarse, coarse + 500_000_000)
    assert not scan_cache.changed_since(coarse, coarse + 1_500_000_000)
