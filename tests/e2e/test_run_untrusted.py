"""`baton run` on a real cluster when a compile is not the easy case (docs/design.md
section 8): a compile error fails on a helper exactly as it fails here; a
compiler that differs from the initiator's is never used, whichever side has
it; jobs that reach beyond themselves (flags, a 100 MB source) stay local or
are refused, and the helper goes on serving. The helper's own refusals, job by
job over gRPC, are in tests/test_helper.py."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_run_remote import baton_run, expected, objects, project
from agent.compile_job import compiler_identity
from tests.harness.compilers import other_gcc
from tests.harness.wait import wait_until

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make")), reason="needs gcc and make")


def helpers_ready(cluster, count: int) -> None:
    wait_until(lambda: len(cluster.agent_records()) == count
               and all(r.helper for r in cluster.agent_records().values()), 30, message=f"{count} helpers advertised")


@pytest.mark.parametrize("native", ["1", "0"], ids=["native-wrapper", "python-wrapper"])
@pytest.mark.parametrize("locale", [{}, {"LC_ALL": "C"}], ids=["our-locale", "C"])
def test_a_compile_error_on_a_helper_has_the_local_diagnostics_and_exit_code(make_cluster, tmp_path, locale, native):
    """In the C locale (LANG unset: CI jobs, cron) GCC quotes 'so'; in a UTF-8 one ‘so’."""
    cluster = make_cluster(agents=1, backups=0, cores=1, web=False)
    helpers_ready(cluster, 1)
    src = tmp_path / "proj"
    (src / "include").mkdir(parents=True)
    (src / "include" / "bad.h").write_text("static inline int helper(void) { int unused; return 1; }\n")
    (src / "bad.c").write_text('#include "bad.h"\nint f(void) {\n  return helper() + nope;\n}\n')
    argv = ["gcc", "-Wall", "-O2", "-g", f"-I{src / 'include'}", "-c", "bad.c", "-o", "bad.o"]
    local = subprocess.run(argv, cwd=src, capture_output=True, text=True, env=dict(os.environ, **locale))
    assert local.returncode == 1 and "nope" in local.stderr and "unused" in local.stderr

    figures, stderr = baton_run(cluster, src, tmp_path, *argv, wait=30.0, check=False,
                                env=dict(locale, BATON_CC_NATIVE=native))
    assert (figures["exit_code"], figures["remote"], figures["failed"]) == (1, 1, 1), stderr
    lines = stderr.splitlines(keepends=True)
    assert lines[0].startswith("baton run: build ") and lines[-1].startswith("baton run: 1 jobs (1 remote")
    assert "".join(lines[1:-1]) == local.stderr
    assert not (src / "bad.o").exists()


def fake_compiler(directory: Path, log: Path) -> Path:
    """`gcc` and `cc` in `directory`: the real gcc with another macro, logging each call to `log`."""
    directory.mkdir()
    for name in ("gcc", "cc"):
        path = directory / name
        path.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec /usr/bin/gcc -DOTHER_COMPILER "$@"\n')
        path.chmod(0o755)
    return directory


def stored(cluster, agent: str, identity: str) -> int:
    """How many times the agent stored a shipped toolchain of `identity` (its log says so)."""
    return cluster.agents[agent].log_path.read_text().count(f"toolchain {identity[:16]} stored")


def test_a_compiler_that_differs_from_the_initiators_is_never_used(make_cluster, tmp_path):
    """The other compilers make other objects (OTHER_COMPILER changes SCALE; the other
    cc1 names itself differently in .comment): any job a helper compiled with a compiler
    other than the initiator's shows in the objects. A helper that lacks the initiator's
    compiler gets it shipped, once (docs/design.md section 8), and compiles with that."""
    helper_log = tmp_path / "helper-compiler.log"
    other_on_helper = fake_compiler(tmp_path / "helper-bin", helper_log)
    cluster = make_cluster(agents=0, backups=0, cores=1, web=False)
    cluster.add_agent("a1", env={"PATH": f"{other_on_helper}{os.pathsep}{os.environ['PATH']}"})
    cluster.add_agent("a2")
    helpers_ready(cluster, 2)
    src = project(tmp_path / "proj", sources=8)
    with open(src / "common.h", "a") as header:
        header.write("#ifdef OTHER_COMPILER\n#undef SCALE\n#define SCALE 4\n#endif\n")

    # a1 has another gcc first on its PATH: it is never run; a1 compiles with the shipped one.
    subprocess.run(["make", "-j4"], cwd=src, check=True, capture_output=True)
    system = objects(src)
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4", wait=30.0)
    assert figures["remote"] > 0 and figures["jobs"] == 9, stderr
    assert objects(src) == system
    assert stored(cluster, "a2", compiler_identity("gcc")) == 0   # a2 has the initiator's gcc
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(8)
    calls = helper_log.read_text().splitlines() if helper_log.exists() else []
    assert not [call for call in calls if "-c" in call.split()], calls

    # The initiator's own gcc is another one, which no helper has: shipped to each helper
    # that gets a job, once, and its objects come back, not the helpers' own gcc's.
    initiator_gcc = other_gcc(tmp_path / "initiator-gcc")
    other_here = {"PATH": f"{initiator_gcc.parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    subprocess.run(["make", "-j4"], cwd=src, check=True, capture_output=True, env=dict(os.environ, **other_here))
    local = objects(src)
    assert local != system
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4", env=other_here, wait=30.0)
    # (a job may still compile here: a helper refuses one whose grant it does not hold yet or any more)
    assert (figures["jobs"], figures["failed"]) == (9, 0) and figures["remote"] > 0, stderr
    assert objects(src) == local
    assert "is a different compiler" in "".join(proc.log_path.read_text() for proc in cluster.agents.values())
    identity = compiler_identity(str(initiator_gcc))
    assert figures["helpers"] and all(stored(cluster, name, identity) == 1 for name in figures["helpers"])
    # A second build finds the toolchains where the first one left them: nothing shipped.
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4", env=other_here, wait=30.0)
    assert figures["remote"] > 0 and objects(src) == local, stderr
    assert all(stored(cluster, name, identity) <= 1 for name in cluster.agents)
    calls = helper_log.read_text().splitlines() if helper_log.exists() else []
    assert not [call for call in calls if "-c" in call.split()], calls


def test_jobs_that_reach_beyond_themselves_stay_local_and_the_helper_goes_on(make_cluster, tmp_path):
    cluster = make_cluster(agents=1, backups=0, cores=1, web=False)
    helpers_ready(cluster, 1)
    src = tmp_path / "proj"
    src.mkdir()
    (src / "ok.c").write_text("int ok(void) { return 1; }\n")
    # Flags that load code or run programs of the initiator's choosing: compiled here, as gcc
    # itself answers them (no plugin there: the same failure).
    for flags in (["-fplugin=/nonexistent/evil.so"], ["-B/nonexistent/"], ["-specs=/nonexistent/evil.specs"]):
        local = subprocess.run(["gcc", *flags, "-c", "ok.c", "-o", "local.o"], cwd=src, capture_output=True,
                               text=True)
        figures, stderr = baton_run(cluster, src, tmp_path, "gcc", *flags, "-c", "ok.c", "-o", "ok.o", check=False)
        assert (figures["jobs"], figures["remote"], figures["exit_code"]) == (1, 0, local.returncode), stderr

    # A 100 MB source: more than a helper takes; it compiles here, to the local object.
    (src / "huge.c").write_bytes(b"/*" + b" " * (100 * 1024 * 1024) + b"*/\nint huge(void) { return 2; }\n")
    subprocess.run(["gcc", "-O2", "-c", "huge.c", "-o", "local.o"], cwd=src, check=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "gcc", "-O2", "-c", "huge.c", "-o", "huge.o", wait=30.0)
    assert (figures["jobs"], figures["remote"]) == (1, 0), stderr
    assert (src / "huge.o").read_bytes() == (src / "local.o").read_bytes()

    # The helper is unharmed: the next job compiles there.
    assert cluster.agents["a1"].alive
    figures, stderr = baton_run(cluster, src, tmp_path, "gcc", "-O2", "-c", "ok.c", "-o", "ok.o", wait=30.0)
    assert (figures["jobs"], figures["remote"], figures["helpers"]) == (1, 1, ["a1"]), stderr
