"""The scan cache (cli/scan_cache.py) with the real gcc: a hit is the scan it replaces, any change a miss."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from cli.cc_args import plan
from cli.compile_scan import input_paths, scan, system_dirs
from cli import scan_cache
from cli.scan_cache import ScanCache, cached_scan

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
LATER = 10_000_000_000   # the cache's clock runs ahead: the files written here count as settled


def later() -> int:
    return time.time_ns() + LATER


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "p"
    for d in ("src", "inc1/sub", "inc2/sub", "build"):
        (root / d).mkdir(parents=True)
    (root / "src/a.c").write_text('#include "a.h"\n#include <sub/b.h>\nint f(void) { return A + B; }\n')
    (root / "src/a.h").write_text("#define A 1\n")
    (root / "inc1/sub/other.h").write_text("\n")
    (root / "inc2/sub/b.h").write_text("#include <stddef.h>\n#define B 2\n")
    return root


def argv(root, *extra):
    return ["gcc", "-I", str(root / "inc1"), f"-I{root / 'inc2'}", *extra, "-O2", "-MD", "-MT",
            "src/a.o", "-MF", "build/a.o.d", "-o", "build/a.o", "-c", "src/a.c"]


def run(cache_dir, root, command, expect_scan: bool):
    """One job through the cache (a fresh ScanCache: as a new `baton run`); the inputs and the .d."""
    decided = plan(command)
    cwd = str(root)
    depfile = root / "build/a.o.d"
    depfile.unlink(missing_ok=True)
    scanned = []

    def scanner():
        scanned.append(1)
        return scan(decided, cwd)

    cache = ScanCache(str(cache_dir), clock_ns=later)
    found = cached_scan(cache, decided, cwd, {"PATH": os.environ["PATH"]}, "gcc-identity",
                        system_dirs(decided.compiler, decided.language), scanner)
    assert bool(scanned) == expect_scan
    return input_paths(decided, cwd, found), depfile.read_bytes()


def test_a_hit_writes_the_same_dependency_file_and_sends_the_same_inputs(tmp_path, project):
    cold = run(tmp_path / "cache", project, argv(project), expect_scan=True)
    warm = run(tmp_path / "cache", project, argv(project), expect_scan=False)
    assert warm == cold
    assert str(project / "inc2/sub/b.h") in cold[0]


def test_another_dependency_target_is_another_entry(tmp_path, project):
    run(tmp_path / "cache", project, argv(project), expect_scan=True)
    command = argv(project)
    command[command.index("src/a.o")] = "other.o"
    paths, depfile = run(tmp_path / "cache", project, command, expect_scan=True)
    assert depfile.startswith(b"other.o:")


def test_a_changed_header_is_a_miss(tmp_path, project):
    run(tmp_path / "cache", project, argv(project), expect_scan=True)
    (project / "src/a.h").write_text("#include <stdint.h>\n#define A 3\n")   # no new file: only a.h changes
    paths, depfile = run(tmp_path / "cache", project, argv(project), expect_scan=True)
    assert any(p.endswith("/stdint.h") for p in paths) and b"stdint.h" in depfile


def test_a_header_touched_but_unchanged_is_a_hit(tmp_path, project):
    cold = run(tmp_path / "cache", project, argv(project), expect_scan=True)
    os.utime(project / "src/a.h")
    assert run(tmp_path / "cache", project, argv(project), expect_scan=False) == cold


@pytest.mark.parametrize("directory", ["inc1/sub", "inc1", "src"])
def test_a_new_header_shadowing_one_is_a_miss(tmp_path, project, directory):
    run(tmp_path / "cache", project, argv(project), expect_scan=True)
    name = "a.h" if directory == "inc1" else "b.h"
    if directory == "inc1":   # a.h is found in src/ first: a new inc1/a.h shadows nothing, but is a change
        (project / "inc1/sub/b.h").write_text("#define B 5\n")
        directory = "inc1/sub"
    (project / directory / name).write_text("#define B 4\n")
    paths, _ = run(tmp_path / "cache", project, argv(project), expect_scan=True)
    if directory != "src":
        assert str(project / "inc1/sub/b.h") in paths


def test_a_changed_flag_is_a_miss(tmp_path, project):
    run(tmp_path / "cache", project, argv(project), expect_scan=True)
    run(tmp_path / "cache", project, argv(project, "-DFOO"), expect_scan=True)


def test_a_computed_has_include_is_never_cached(tmp_path, project):
    (project / "src/a.h").write_text("#define N <x.h>\n#if __has_include(N)\n#endif\n#define A 1\n")
    run(tmp_path / "cache", project, argv(project), expect_scan=True)
    run(tmp_path / "cache", project, argv(project), expect_scan=True)


def test_a_literal_has_include_is_probed(tmp_path, project):
    (project / "src/a.h").write_text("#if __has_include(<sub/x.h>)\n#include <sub/x.h>\n#endif\n#define A 1\n")
    run(tmp_path / "cache", project, argv(project), expect_scan=True)
    (project / "inc2/sub/x.h").write_text("\n")
    paths, _ = run(tmp_path / "cache", project, argv(project), expect_scan=True)
    assert str(project / "inc2/sub/x.h") in paths


def test_files_changed_after_the_scan_started_are_not_cached(tmp_path, project):
    """The scan may have read other content than the one hashed afterwards (racy ones, changed
    just before the scan started, are: tests/test_scan_cache_racy.py)."""
    decided = plan(argv(project))
    cache = ScanCache(str(tmp_path / "cache"), clock_ns=lambda: time.time_ns() - 5_000_000_000)
    for _ in range(2):
        cached_scan(cache, decided, str(project), {}, "gcc-identity", system_dirs("gcc", "c"),
                    lambda: scan(decided, str(project)))
    assert cache.hits == 0


def _probe_dirs_reference(source, tree, chain):
    """probe_dirs as first written (every header adds every probe; relpath): the list, in order,
    that the faster probe_dirs must give."""
    probes = dict.fromkeys(chain)
    stack = [source]
    for depth, path in tree:
        del stack[depth + 1:]
        dirs = [os.path.dirname(stack[-1]), *chain]
        probes.setdefault(dirs[0], None)
        for base in dirs:
            if path.startswith(base.rstrip("/") + "/"):
                sub = os.path.dirname(os.path.relpath(path, base))
                for other in dirs:
                    probes.setdefault(os.path.normpath(os.path.join(other, sub)), None)
        stack.append(path)
    return list(probes)


def test_probe_dirs_are_those_of_every_header_in_order(tmp_path, project):
    """A real scan with system headers (several includers' directories, subdirectories such as
    bits/ and sys/, headers read more than once) and a tree under a root-level directory."""
    (project / "src/a.c").write_text('#include "a.h"\n#include <sub/b.h>\n#include <stdio.h>\n'
                                     '#include <sys/stat.h>\n#include <stdlib.h>\nint f(void) { return A + B; }\n')
    command = argv(project)
    decided = plan(command)
    cwd = str(project)
    system = system_dirs(decided.compiler, decided.language)
    found = scan(decided, cwd)
    chain = scan_cache.chain_dirs(decided, cwd, system)
    source = os.path.join(cwd, decided.source)
    assert len(found.tree) > 20
    assert scan_cache.probe_dirs(source, found.tree, chain) == _probe_dirs_reference(source, found.tree, chain)
    tree = ((0, "/x/a.h"), (1, "/x/y/b.h"), (1, "/z/c.h"), (0, "/z/w/d.h"), (1, "/x/a.h"))
    assert scan_cache.probe_dirs("/src.c", tree, ["/", "/z"]) == _probe_dirs_reference("/src.c", tree, ["/", "/z"])


def test_an_entry_keeps_a_listing_as_text_that_reads_back_the_same():
    part = [["A.h", "f"], ["a b\u00e9.h", "lf"], ["d", "ld"], ["gone.h", "l-"], ["sub", "d"],
            ["x\udcff.h", "f"]]       # a name of undecodable bytes (os.fsdecode's surrogate)
    text = scan_cache._kept_text(part)
    assert scan_cache._kept_list(json.loads(json.dumps(text))) == part
    assert scan_cache._kept_list(scan_cache._kept_text([])) == []
