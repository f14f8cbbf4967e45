"""A helper writes the compile's dependency file (CompileJob.dep_flags, agent/depfile.py):
real compilers, real files, each .d checked byte for byte against the one a local compile
of the same command writes in the same directory. The job's flags come from cli.cc_args.plan
on the real command line, as the initiator sends them."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from agent.compile_job import MAX_DEP_VALUE, CompileJob, JobRefused, run_compile
from agent.depfile import relocated
from agent.job_root import RootPool
from cli.cc_args import RemotePlan, plan
from cli.compile_scan import pack, scan

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
COMPILERS = ["gcc", pytest.param("clang", marks=pytest.mark.skipif(shutil.which("clang") is None,
                                                                  reason="needs clang"))]
LONG = "a-directory-with-a-name-long-enough-to-wrap"


@pytest.fixture
def project(tmp_path):
    """Headers in an include directory (one a level down), one in a long-named directory,
    system headers through <stdio.h>."""
    proj = tmp_path / "proj"
    for d in ("include/deep", LONG, "src", "obj"):
        (proj / d).mkdir(parents=True)
    (proj / "include" / "lib.h").write_text('#pragma once\n#include <stdio.h>\n#include "deep/x.h"\nint lib(int);\n')
    (proj / "include" / "deep" / "x.h").write_text("#define X 2\n")
    (proj / LONG / "more.h").write_text("static inline int more(void) { return X; }\n")
    (proj / "src" / "a.c").write_text('#include "lib.h"\n#include "more.h"\n'
                                      'int lib(int a) { return printf("%d", a) + more(); }\n')
    (proj / "src" / "bad.c").write_text('#include "lib.h"\nint bad(void) { return nope; }\n')
    return proj


@pytest.fixture
def roots(tmp_path):
    """Reused job roots, as a helper keeps them; deep enough that every rooted name is
    longer than half a line."""
    directory = tmp_path / "helper" / "jobs"
    directory.mkdir(parents=True)
    return RootPool(str(directory), keep=1)


def helper_job(argv: list[str], cwd) -> tuple[RemotePlan, CompileJob]:
    """The job the initiator sends: scanned and packed here, dep_flags as cli.cc_args.plan holds them."""
    p = plan(argv)
    assert isinstance(p, RemotePlan), p
    return p, dataclasses.replace(pack(p, str(cwd), scan(p, str(cwd))), dep_flags=p.dep_flags)


def local_depfile(argv: list[str], cwd, depfile) -> bytes:
    """The .d a local compile writes (then removed: the scan writes it next)."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True)
    assert done.returncode == 0, done.stderr
    written = depfile.read_bytes()
    depfile.unlink()
    return written


INC = ["-I{p}/include", f"-I{{p}}/{LONG}"]
# name: (working directory in the project, arguments ({p}: the project), the .d in the project)
CASES = {
    "absolute -I, -MD": ("", ["-MD", "-MT", "obj/a.o", "-MF", "obj/a.d", *INC, "-c", "src/a.c", "-o", "obj/a.o"],
                         "obj/a.d"),
    "absolute -I, -MMD": ("", ["-MMD", "-MT", "obj/a.o", "-MF", "obj/a.d", *INC, "-c", "src/a.c", "-o", "obj/a.o"],
                          "obj/a.d"),
    "relative -I": ("", ["-MD", "-MT", "obj/a.o", "-MF", "obj/a.d", "-Iinclude", f"-I{LONG}", "-c", "src/a.c",
                         "-o", "obj/a.o"], "obj/a.d"),
    "a subdirectory": ("src", ["-MD", "-MT", "a.o", "-MF", "a.d", *INC, "-c", "a.c"], "src/a.d"),
    # Relative paths that climb stay as spelt: the .d names ../include/lib.h as a local one does.
    "-I../include and ../src/a.c": ("obj", ["-MD", "-MT", "a.o", "-MF", "a.d", "-I../include", f"-I../{LONG}",
                                            "-c", "../src/a.c"], "obj/a.d"),
    "-MP": ("", ["-MD", "-MP", "-MT", "obj/a.o", "-MF", "obj/a.d", *INC, "-c", "src/a.c", "-o", "obj/a.o"],
            "obj/a.d"),
    "-MQ with a $, joined flags": ("", ["-MMD", "-MQ$(OBJ)/a.o", "-MTobj/a.o", "-MFobj/a.d", *INC, "-c", "src/a.c",
                                        "-o", "obj/a.o"], "obj/a.d"),
    "an absolute source": ("", ["-MD", "-MT", "obj/a.o", "-MF", "obj/a.d", *INC, "-c", "{p}/src/a.c",
                                "-o", "obj/a.o"], "obj/a.d"),
    # No -MT, no -MF: plan() names them as the driver does, the target quoted (a$$b\ c.o).
    "no -MT, an object named with $ and a space": ("", ["-MD", *INC, "-c", "src/a.c", "-o", "obj/a$b c.o"],
                                                   "obj/a$b c.d"),
}


def case(name: str, compiler: str, project):
    """(argv, working directory, the .d's path) of a case in `project`."""
    sub, args, depfile = CASES[name]
    return [compiler, *(a.replace("{p}", str(project)) for a in args)], project / sub, project / depfile


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("compiler", COMPILERS)
def test_the_helpers_dependency_file_is_the_local_one(project, roots, compiler, name):
    argv, cwd, depfile = case(name, compiler, project)
    local = local_depfile(argv, cwd, depfile)
    result = run_compile(compiler, helper_job(argv, cwd)[1], roots=roots)
    assert (result.exit_code, result.diagnostics) == (0, b"")
    assert result.depfile == local
    assert b"deep/x.h" in local and (b"stdio.h" in local) == ("-MD" in argv)


def test_names_the_job_root_lengthens_are_wrapped_again_as_the_compiler_wraps_them(project, roots):
    """Every name in the job root is longer than half of GCC's 72 columns, so the helper's
    compiler wrote each on a line of its own; the local file has lines of two names."""
    argv, cwd, depfile = case("absolute -I, -MD", "gcc", project)
    local = local_depfile(argv, cwd, depfile)
    assert any(line.count(b" /") >= 2 for line in local.splitlines()[1:]), local.decode()
    assert len(roots.directory) > 36
    assert run_compile("gcc", helper_job(argv, cwd)[1], roots=roots).depfile == local


def test_a_failed_compile_returns_no_dependency_file(project, roots):
    argv = ["gcc", "-MD", "-MT", "obj/bad.o", "-MF", "obj/bad.d", f"-I{project}/include", "-c", "src/bad.c",
            "-o", "obj/bad.o"]
    local = subprocess.run(argv, cwd=project, capture_output=True)
    p = plan(argv)
    job = CompileJob(args=p.flags, source=p.source, cwd=str(project), system_dirs=(), dep_flags=p.dep_flags,
                     files={str(project / "src/bad.c"): (project / "src/bad.c").read_bytes(),
                            str(project / "include/lib.h"): b'#include "deep/x.h"\n',
                            str(project / "include/deep/x.h"): b""})
    result = run_compile("gcc", job, roots=roots)
    assert local.returncode != 0 and result.exit_code == local.returncode
    assert result.depfile is None and b"nope" in result.diagnostics
    ok = dataclasses.replace(job, files={**job.files, str(project / "src/bad.c"): b"int bad;\n"})
    assert run_compile("gcc", ok, roots=roots).depfile == b"obj/bad.o: src/bad.c\n"   # the reused root: its own .d


@pytest.mark.parametrize("dep_flags", [
    ("-MD", "-MT", "a.o", "-MF"),                  # -MF without its value
    ("-MD", "-MT", "a.o", "-MG"),                  # the -M flags that are not a compile's
    ("-M", "-MT", "a.o"),
    ("-MM", "-MT", "a.o"),
    ("-MD", "-MT", "x" * (MAX_DEP_VALUE + 1)),     # a huge target
    ("-MD", "-MT", "a.o\0"),
    ("-MD", "-MT", "a.o b.o"),                     # written unquoted: not read back by its names
    ("-MD", "-MF", "a.d"),                         # no target: the default one is the helper's object
    ("-MP", "-MT", "a.o"),                         # no -MD/-MMD
    ("-MD", "-Wl,-evil", "-MT", "a.o"),
])
def test_dependency_flags_a_local_compile_does_not_take_as_a_compiles_are_refused(tmp_path, dep_flags):
    job = CompileJob(args=(), source="a.c", cwd="/w", files={"/w/a.c": b"int x;\n"}, system_dirs=(),
                     dep_flags=dep_flags)
    with pytest.raises(JobRefused):
        run_compile("gcc", job, workdir=str(tmp_path))


def test_dependency_flags_without_md_are_refused_as_gcc_refuses_them(tmp_path):
    """GCC fails a compile with -MP, -MT, -MF but no -MD/-MMD: plan() keeps it local (it fails
    here, with the compiler's words), and a helper sent one refuses it."""
    (tmp_path / "a.c").write_text("int x;\n")
    argv = ["gcc", "-MP", "-MT", "a.o", "-c", "a.c"]
    assert subprocess.run(argv, cwd=tmp_path, capture_output=True).returncode != 0
    assert not isinstance(plan(argv), RemotePlan)
    job = CompileJob(args=(), source="a.c", cwd=str(tmp_path), system_dirs=(), dep_flags=("-MP", "-MT", "a.o"),
                     files={str(tmp_path / "a.c"): b"int x;\n"})
    with pytest.raises(JobRefused, match="without -MD"):
        run_compile("gcc", job, workdir=str(tmp_path))


@pytest.mark.parametrize("raw", [
    b"x.o: \\\n /r/a.c\n",           # wrapped where neither GCC nor Clang wraps
    b"x.o: /r/a.c",                  # no end of line
    b"x.o /r/a.c\n",                 # no target with a ':'
])
def test_a_file_no_known_compiler_writes_is_not_returned(raw):
    assert relocated(raw, "/r", 1) is None
    assert relocated(b"x.o: /r/a.c\n", "/r", 1) == b"x.o: /a.c\n"
    assert relocated(b"x.o: /r $/a.c\n", "/r $", 1) is None   # a root the compiler quotes
