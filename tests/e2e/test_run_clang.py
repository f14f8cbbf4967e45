"""`baton run` with a Clang no helper has (docs/design.md section 8): it is shipped to each
helper that gets a job, once, and its objects come back byte-identical, -g included."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from agent.compile_job import compiler_identity
from tests.e2e.test_run_remote import baton_run, expected, objects, project
from tests.e2e.test_run_untrusted import helpers_ready, stored
from tests.harness.compilers import other_clang

pytestmark = pytest.mark.skipif(not (shutil.which("clang") and shutil.which("make")),
                                reason="needs clang and make (.ci/run installs Debian's clang)")


def test_a_clang_no_helper_has_is_shipped_once_and_makes_the_local_objects(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    helpers_ready(cluster, 2)
    clang = other_clang(tmp_path / "initiator-clang")
    here = {"PATH": f"{clang.parent}{os.pathsep}{os.environ['PATH']}"}
    src = project(tmp_path / "proj", sources=8)
    subprocess.run(["make", "-j4", "CC=clang"], cwd=src, check=True, capture_output=True, env=dict(os.environ, **here))
    local = objects(src)
    identity = compiler_identity(str(clang))
    for build in ("first", "second"):
        subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
        figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4", "CC=clang", env=here, wait=30.0)
        # (a job may still compile here: a helper refuses one whose grant it does not hold yet or any more)
        assert (figures["jobs"], figures["failed"]) == (9, 0) and figures["remote"] > 0, (build, stderr)
        assert objects(src) == local, build
        assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(8)
        # Shipped once to each helper that got a job; the second build finds it there.
        assert all(stored(cluster, name, identity) == 1 for name in figures["helpers"]), build
        assert all(stored(cluster, name, identity) <= 1 for name in cluster.agents), build


CXX_MAKEFILE = """\
OBJS = $(patsubst %.cc,%.o,$(wildcard *.cc))
app: $(OBJS)
\t$(CXX) $(OBJS) -o app
%.o: %.cc
\t$(CXX) -O2 -g -MMD -c $< -o $@
clean:
\trm -f app *.o *.d
-include *.d
"""


@pytest.mark.parametrize("include_scan", ["1", "0"], ids=["include-lines", "scanned"])
def test_clang_plus_plus_with_g_makes_the_local_objects(make_cluster, tmp_path, include_scan):
    """Clang records libstdc++'s directory as /usr/bin/../lib/gcc/<triple>/12/../../../../include/c++/12
    in -g's line table: the helpers' own clang++ must name it alike (docs/internals.md, job roots).
    With -MMD the .d files are the local ones whether the include lines or a scan named the
    files (Clang's scan, `-MM -H`, names system headers: the helper's .d is written over it)."""
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    helpers_ready(cluster, 2)
    src = tmp_path / "proj"
    src.mkdir()
    (src / "Makefile").write_text(CXX_MAKEFILE)
    for i in range(4):
        (src / f"s{i}.cc").write_text(f'#include <string>\n#include <vector>\nint f{i}(int n) '
                                      f'{{ std::vector<std::string> v(n, "x{i}"); return (int)v.size() + {i}; }}\n')
    (src / "main.cc").write_text('#include <cstdio>\n' + "".join(f"int f{i}(int);\n" for i in range(4)) +
                                 'int main() { std::printf("%d\\n", f0(1) + f1(1) + f2(1) + f3(1)); }\n')
    subprocess.run(["make", "-j4", "CXX=clang++"], cwd=src, check=True, capture_output=True)
    local = objects(src)
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4", "CXX=clang++", wait=30.0,
                                env={"BATON_INCLUDE_SCAN": include_scan})
    assert (figures["jobs"], figures["failed"]) == (5, 0) and figures["remote"] > 0, stderr
    assert (figures["include_scans"] > 0) == (include_scan == "1"), figures
    assert objects(src) == local
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == "10\n"
