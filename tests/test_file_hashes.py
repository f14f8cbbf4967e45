"""One hash cache by stat stamp for the scan cache's lookup and the request's digests
(cli/file_hashes.py): a header is read once a build and stat'ed once a job, with the real gcc;
the racy and changed-while-read rules of both caches before still hold."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter

import pytest

from cli import file_hashes
from cli.cc_args import plan
from cli.compile_scan import input_paths, scan, system_dirs
from cli.file_hashes import SETTLE_NS, Changed, FileHashes
from cli.job_inputs import Digests
from cli.scan_cache import ScanCache, cached_scan

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def later() -> int:
    return time.time_ns() + 5 * SETTLE_NS


def racy() -> int:
    return time.time_ns() + SETTLE_NS // 2


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "p"
    for d in ("src", "inc/sub", "build"):
        (root / d).mkdir(parents=True)
    (root / "src/a.c").write_text('#include "a.h"\n#include <sub/b.h>\n#include <stddef.h>\nint f(void) { return A + B; }\n')
    (root / "src/a.h").write_text("#define A 1\n")
    (root / "inc/sub/b.h").write_text("#define B 2\n")
    return root


class Run:
    """A `baton run`'s job path as cli/job_server.py wires it: one FileHashes for both."""

    def __init__(self, cache_dir, clock):
        self.digests = Digests(clock_ns=clock)
        self.cache = ScanCache(str(cache_dir), clock_ns=clock, hashes=self.digests.hashes)

    def job(self, root, send=lambda digest: False):
        command = ["gcc", f"-I{root / 'inc'}", "-O2", "-MD", "-MT", "build/a.o", "-MF", "build/a.o.d",
                   "-o", "build/a.o", "-c", "src/a.c"]
        decided = plan(command)
        cwd = str(root)
        found = cached_scan(self.cache, decided, cwd, {"PATH": os.environ["PATH"]}, "gcc-identity",
                            system_dirs(decided.compiler, decided.language), lambda: scan(decided, cwd))
        paths = input_paths(decided, cwd, found)
        return paths, self.digests.inputs(paths, send, found.seen)


def counting_stats(monkeypatch) -> Counter:
    stats: Counter = Counter()
    real = os.stat

    def stat(path, *args, **kwargs):
        stats[os.fspath(path)] += 1
        return real(path, *args, **kwargs)
    monkeypatch.setattr(file_hashes.os, "stat", stat)
    return stats


def test_a_header_is_read_once_a_build_and_stat_once_a_warm_job(tmp_path, project, monkeypatch):
    run = Run(tmp_path / "cache", later)
    paths, _ = run.job(project)                       # scanned, stored: each file read once, for both
    assert run.digests.hashes.reads == len(paths) and run.cache.misses == 1
    again = Run(tmp_path / "cache", later)            # the next build: a hit
    stats = counting_stats(monkeypatch)
    paths, inputs = again.job(project)
    assert again.cache.hits == 1 and again.digests.hashes.reads == len(paths)
    stats.clear()
    paths, inputs = again.job(project)                # a job after it: no read, one stat a file
    assert again.digests.hashes.reads == len(paths)
    # (stdc-predef.h is also looked for by compile_scan.input_paths, in each system directory.)
    assert all(stats[path] == 1 for path in paths if not path.endswith("/stdc-predef.h")), stats
    assert {f.path: f.sha256 for f in inputs} == {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def test_a_racy_header_is_hashed_at_each_lookup_and_not_again_for_the_request(tmp_path, project):
    Run(tmp_path / "cache", racy).job(project)
    run = Run(tmp_path / "cache", racy)
    run.job(project)
    before = run.digests.hashes.reads
    _, inputs = run.job(project)
    assert run.cache.hits == 2
    assert run.digests.hashes.reads - before == 3      # a.c, a.h, b.h (written just now), once each
    (project / "src/a.h").write_text("#define A 7\n")  # racy: its stamp alone is not trusted
    _, inputs = run.job(project)
    assert run.cache.misses == 1
    [a_h] = [f for f in inputs if f.path.endswith("/a.h")]
    assert a_h.sha256 == hashlib.sha256(b"#define A 7\n").hexdigest() and a_h.size == 12


def test_a_miss_hands_over_what_the_store_looked_at_after_the_scan(tmp_path, project):
    run = Run(tmp_path / "cache", later)
    run.job(project)
    (project / "inc/sub/b.h").write_text("#include <stdint.h>\n#define B 3\n")
    paths, inputs = run.job(project)
    assert run.cache.misses == 2 and any(p.endswith("/stdint.h") for p in paths)
    assert {f.path: f.sha256 for f in inputs} == {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
    assert all(f.content == b"" for f in inputs)


def test_contents_sent_are_read_with_their_own_hash(tmp_path, project):
    run = Run(tmp_path / "cache", later)
    run.job(project)
    paths, inputs = run.job(project, send=lambda digest: True)
    assert [f.path for f in inputs] == paths
    for f in inputs:
        assert f.content == open(f.path, "rb").read() and f.sha256 == hashlib.sha256(f.content).hexdigest()
        assert f.size == len(f.content)


def test_a_file_changed_while_read_is_a_miss_for_the_scan_cache_and_sent_as_read(tmp_path, monkeypatch):
    path = tmp_path / "h.h"
    path.write_bytes(b"one\n")
    real = os.stat
    calls = Counter()

    def stat(p, *args, **kwargs):    # the second stat of a read sees another ctime: changed meanwhile
        st = real(p, *args, **kwargs)
        calls[os.fspath(p)] += 1
        if os.fspath(p) == str(path) and calls[os.fspath(p)] % 2 == 0:
            return os.stat_result((*st[:9], st.st_ctime + 1))
        return st
    monkeypatch.setattr(file_hashes.os, "stat", stat)
    hashes = FileHashes(later)
    with pytest.raises(Changed):
        hashes.look(str(path))
    [sent] = Digests(hashes).inputs([str(path)], lambda digest: True)
    assert sent.content == b"one\n" and sent.sha256 == hashlib.sha256(b"one\n").hexdigest()
    monkeypatch.setattr(file_hashes.os, "stat", real)
    reads = hashes.reads
    hashes.look(str(path))
    assert hashes.reads == reads + 1      # what changed while read was not kept


def test_a_settled_stamp_is_kept_a_racy_one_not(tmp_path):
    path = tmp_path / "h.h"
    path.write_bytes(b"one\n")
    for clock, reads in ((racy, 2), (later, 1)):
        hashes = FileHashes(clock)
        hashes.look(str(path))
        hashes.look(str(path))
        assert hashes.reads == reads
    mtime = os.stat(path).st_mtime_ns      # a future mtime (touch -d) is a change not yet settled
    os.utime(path, ns=(mtime, time.time_ns() + 3 * SETTLE_NS))
    hashes = FileHashes(lambda: time.time_ns() + 2 * SETTLE_NS)
    hashes.look(str(path))
    hashes.look(str(path))
    assert hashes.reads == 2
