"""A distributed compile's two halves with the real compiler, no network: the
initiator's scan and pack (cli.compile_scan) and the helper's compile
(agent.compile_job), checked against a local compile of the same command."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.compile_job import (LOCALE_VARS, MAX_DIAGNOSTICS, CompileJob, JobRefused, compiler_identity, map_args, run_compile)
from cli.cc_args import RemotePlan, plan
from cli.compile_scan import ScanFailed, pack, scan

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture
def project(tmp_path):
    """A small C project: an include directory, a macro, a header with a macro that moves columns."""
    (tmp_path / "include").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "obj").mkdir()
    (tmp_path / "include" / "lib.h").write_text(
        "#pragma once\n#include <stdio.h>\n#define TWICE(x) ((x) + (x))\nint lib(int);\n")
    (tmp_path / "src" / "lib.c").write_text(
        '#include "lib.h"\nint lib(int a) { return TWICE(a) + printf("%s:%d\\n", __FILE__, __LINE__); }\n')
    (tmp_path / "src" / "bad.c").write_text('#include "lib.h"\nint bad(void) { return undefined_name; }\n')
    (tmp_path / "src" / "warn.c").write_text('#include "lib.h"\nint warn(void) { int unused; return 1; }\n')
    return tmp_path


def local_compile(argv, cwd):
    return subprocess.run(argv, cwd=cwd, capture_output=True)


def split_compile(argv, cwd, **kw):
    """Scan and pack here, compile as a helper would, write the object where the command says."""
    p = plan(argv)
    assert isinstance(p, RemotePlan), p
    result = run_compile(argv[0], pack(p, str(cwd), scan(p, str(cwd))), **kw)
    if result.exit_code == 0:
        (Path(cwd) / p.output).write_bytes(result.object)
    return result


FLAGS = ["-O2", "-g", "-Wall", "-fdiagnostics-color=never", "-Iinclude", f"-I{os.sep}usr{os.sep}include", "-DX=1"]


@pytest.mark.parametrize("deps, depfile", [
    (["-MD"], "obj/lib.d"),
    (["-MMD", "-MP"], "obj/lib.d"),
    (["-MD", "-MT", "lib-target", "-MQ", "$(odd)", "-MF", "obj/lib.o.d"], "obj/lib.o.d"),
])
def test_objects_and_dependency_files_are_byte_identical_to_local_ones(project, deps, depfile):
    argv = ["gcc", *FLAGS, *deps, "-c", "src/lib.c", "-o", "obj/lib.o"]
    assert local_compile(argv, project).returncode == 0
    local_obj, local_dep = (project / "obj/lib.o").read_bytes(), (project / depfile).read_bytes()
    (project / "obj/lib.o").unlink()
    (project / depfile).unlink()
    result = split_compile(argv, project)
    assert result.exit_code == 0 and result.diagnostics == b""
    assert (project / "obj/lib.o").read_bytes() == local_obj      # -g: debug info names our paths
    assert (project / depfile).read_bytes() == local_dep          # written by the scan, as make reads it


@pytest.mark.parametrize("compiler, source", [("gcc", "a.c"), ("g++", "a.cc"), ("clang", "a.c"), ("clang++", "a.cc")])
def test_debug_info_names_the_system_headers_as_the_compiler_spells_them(tmp_path, compiler, source):
    """Clang names libstdc++'s directory /usr/bin/../lib/gcc/<triple>/12/../../../../include/c++/12
    and -g records that spelling: the helper's -isystem must spell it alike."""
    if shutil.which(compiler) is None:
        pytest.skip(f"needs {compiler}")
    (tmp_path / source).write_text("#include <vector>\n#include <string>\nint f(int n) "
                                   "{ std::vector<std::string> v(n, \"x\"); return (int)v.size(); }\n"
                                   if source.endswith(".cc") else
                                   "#include <stdio.h>\n#include <stddef.h>\nint f(int x) { return printf(\"%d\", x); }\n")
    argv = [compiler, "-O2", "-g", "-c", source, "-o", "a.o"]
    assert local_compile(argv, tmp_path).returncode == 0
    local = (tmp_path / "a.o").read_bytes()
    (tmp_path / "a.o").unlink()
    result = split_compile(argv, tmp_path, workdir=str(tmp_path))
    assert (result.exit_code, result.diagnostics) == (0, b"")
    assert (tmp_path / "a.o").read_bytes() == local


@pytest.mark.skipif(not os.path.isfile("/usr/include/stdc-predef.h"), reason="needs glibc's stdc-predef.h")
def test_what_gcc_includes_unasked_it_includes_on_the_helper_too(tmp_path):
    """GCC includes glibc's stdc-predef.h before the source (its macros without any #include);
    -nostdinc, which a helper compiles with, turns that off, so the helper names it."""
    (tmp_path / "iso.c").write_text("int wide = __STDC_ISO_10646__;\n")
    argv = ["gcc", "-O2", "-g3", "-c", "iso.c", "-o", "iso.o"]
    assert local_compile(argv, tmp_path).returncode == 0
    local = (tmp_path / "iso.o").read_bytes()
    (tmp_path / "iso.o").unlink()
    result = split_compile(argv, tmp_path, workdir=str(tmp_path))
    assert (result.exit_code, result.diagnostics) == (0, b"")
    assert (tmp_path / "iso.o").read_bytes() == local   # -g3: the macros, and the file they came from


@pytest.mark.parametrize("compiler", ["g++", "clang++"])
def test_diagnostics_in_the_system_headers_name_them_as_the_compiler_does(tmp_path, compiler):
    """The notes of an error name libstdc++'s headers: Clang by its /usr/bin/../lib/gcc/... spelling."""
    if shutil.which(compiler) is None:
        pytest.skip(f"needs {compiler}")
    (tmp_path / "b.cc").write_text('#include <vector>\nvoid f() { std::vector<int> v; v.push_back("x"); }\n')
    argv = [compiler, "-O2", "-g", "-c", "b.cc", "-o", "b.o"]
    local = local_compile(argv, tmp_path)
    result = split_compile(argv, tmp_path, workdir=str(tmp_path))
    assert local.returncode != 0 and b"stl_vector.h" in local.stderr
    assert (result.exit_code, result.diagnostics) == (local.returncode, local.stderr)


@pytest.mark.parametrize("system_dirs, files", [
    (("/usr/../../etc",), {}),                       # climbs above the job root
    (("/../root/usr/include",), {}),                 # above it and back: refused too
    (("/w/a.c/../inc",), {}),                        # a job file where a '..' needs a directory
])
def test_a_system_directory_that_leaves_the_job_or_crosses_a_file_is_refused(tmp_path, system_dirs, files):
    job = CompileJob(args=(), source="a.c", cwd="/w", files={"/w/a.c": b"int x;\n", **files},
                     system_dirs=system_dirs)
    with pytest.raises(JobRefused):
        run_compile("gcc", job, workdir=str(tmp_path))


def test_a_compile_error_fails_with_the_same_diagnostics_and_exit_code(project):
    argv = ["gcc", *FLAGS, "-c", "src/bad.c", "-o", "obj/bad.o"]
    local = local_compile(argv, project)
    result = split_compile(argv, project)
    assert local.returncode != 0 and result.exit_code == local.returncode
    assert result.diagnostics == local.stderr and b"undefined_name" in result.diagnostics


def test_warnings_are_the_local_ones(project):
    argv = ["gcc", *FLAGS, "-c", "src/warn.c", "-o", "obj/warn.o"]
    local = local_compile(argv, project)
    result = split_compile(argv, project)
    assert b"unused" in local.stderr and result.diagnostics == local.stderr


def test_a_missing_header_fails_the_scan_so_the_compile_runs_locally(project):
    (project / "src" / "missing.c").write_text('#include "nowhere.h"\n')
    p = plan(["gcc", "-c", "src/missing.c"])
    with pytest.raises(ScanFailed, match="nowhere.h"):
        scan(p, str(project))


@pytest.mark.parametrize("flag", ["-fplugin=/tmp/evil.so", "-B/tmp", "-specs=/tmp/x", "-Wl,-evil",
                                  "-fdebug-prefix-map=/=/x", "--frobnicate", "-o", "/etc/passwd"])
def test_a_helper_refuses_flags_that_reach_beyond_the_job(flag, tmp_path):
    job = CompileJob(args=(flag,), source="a.c", cwd="/w", files={"/w/a.c": b"int x;\n"}, system_dirs=())
    with pytest.raises(JobRefused):
        map_args(job, str(tmp_path))


@pytest.mark.parametrize("path", ["-I../../../etc", "-Isub/../../..", "-include../../secret.h"])
def test_a_helper_refuses_paths_that_leave_the_job(path, tmp_path):
    job = CompileJob(args=(path,), source="a.c", cwd="/w", files={"/w/a.c": b"int x;\n"}, system_dirs=())
    with pytest.raises(JobRefused):
        run_compile("gcc", job, workdir=str(tmp_path))


@pytest.fixture
def climbing(tmp_path):
    """A project built in a subdirectory, as make projects do: -I../include, the source
    ../src/x.c, and `#include "../common/config.h"` (from the source and from a header)."""
    proj = tmp_path / "proj"
    for d in ("include", "common", "src", "build/sub"):
        (proj / d).mkdir(parents=True)
    (proj / "include" / "util.h").write_text('#include <stdio.h>\n#include "../common/config.h"\nint util(int);\n')
    (proj / "common" / "config.h").write_text("#define SCALE 3\n")
    (proj / "src" / "x.c").write_text('#include "util.h"\n#include "../common/config.h"\n'
                                      'int util(int a) { return printf("%s %d", __FILE__, a * SCALE); }\n')
    return proj


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
@pytest.mark.parametrize("include", ["-I../include", "-Isub/../../include"])
def test_relative_paths_that_climb_compile_as_spelt_and_byte_identical(climbing, include, compiler):
    """-g records ../src/x.c and ../include/util.h as spelt (DW_AT_name, the line table) and the
    build directory as DW_AT_comp_dir; the .d names them so too. build/sub holds no file of the
    job: the helper makes it, so that sub/.. is there what it is here."""
    if shutil.which(compiler) is None:
        pytest.skip(f"needs {compiler}")
    build = climbing / "build"
    argv = [compiler, "-O2", "-g", include, "-MD", "-c", "../src/x.c", "-o", "x.o"]
    assert local_compile(argv, build).returncode == 0
    local_obj, local_dep = (build / "x.o").read_bytes(), (build / "x.d").read_bytes()
    assert b"../include/util.h" in local_dep and b"../src/x.c" in local_obj
    (build / "x.o").unlink()
    (build / "x.d").unlink()
    result = split_compile(argv, build)
    assert (result.exit_code, result.diagnostics) == (0, b"")
    assert (build / "x.o").read_bytes() == local_obj
    assert (build / "x.d").read_bytes() == local_dep


@pytest.mark.parametrize("args, source", [
    (("-I../../../../../../../etc",), "a.c"),
    (("-I../../../../etc",), "a.c"),              # /w/p/sub: three parts, the fourth '..' climbs above
    (("-iquote", "../../../../etc"), "a.c"),
    (("-Iinc/../../../../..",), "a.c"),
    ((), "../../../../etc/x.c"),
])
def test_a_relative_path_that_climbs_above_the_job_root_is_refused(tmp_path, args, source):
    job = CompileJob(args=args, source=source, cwd="/w/p/sub", files={"/w/p/sub/a.c": b"int x;\n"}, system_dirs=())
    with pytest.raises(JobRefused, match="climbs above"):
        run_compile("gcc", job, workdir=str(tmp_path))


def test_a_relative_include_directory_that_stays_in_the_job_compiles(tmp_path):
    job = CompileJob(args=("-I../../inc",), source="../src/a.c", cwd="/w/p", system_dirs=(),
                     files={"/w/src/a.c": b'#include "y.h"\nint x = Y;\n', "/inc/y.h": b"#define Y 1\n"})
    result = run_compile("gcc", job, workdir=str(tmp_path))
    assert (result.exit_code, result.diagnostics) == (0, b"") and result.object


def test_a_source_path_that_climbs_is_refused_and_absolute_paths_stay_in_the_job(tmp_path):
    job = CompileJob(args=(), source="../../etc/shadow.c", cwd="/w", files={}, system_dirs=())
    with pytest.raises(JobRefused):
        run_compile("gcc", job, workdir=str(tmp_path))
    # An absolute path cannot climb above "/": "/w/../../../x.c" is the job's own /x.c.
    contained = CompileJob(args=("-I/w/../../inc",), source="/w/../../../x.c", cwd="/w", system_dirs=(),
                           files={"/w/../../../x.c": b'#include "y.h"\nint x = Y;\n', "/inc/y.h": b"#define Y 1\n"})
    assert run_compile("gcc", contained, workdir=str(tmp_path)).exit_code == 0
    assert not os.path.exists("/x.c") and not os.path.exists("/inc/y.h")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_a_job_that_includes_a_secret_of_the_helper_cannot_read_it(tmp_path):
    secret = tmp_path / "agent-key.pem"
    secret.write_text("THE-AGENT-KEY\n")
    secret.chmod(0o600)
    job = CompileJob(args=(), source="a.c", cwd="/w", system_dirs=(),
                     files={"/w/a.c": f'#include "{secret}"\n'.encode()})
    result = run_compile("gcc", job, workdir=str(tmp_path), user="nobody")
    assert result.exit_code != 0 and b"THE-AGENT-KEY" not in result.diagnostics
    assert b"Permission denied" in result.diagnostics


def test_an_oversized_job_is_refused_before_anything_is_written(tmp_path):
    huge = CompileJob(args=(), source="a.c", cwd="/w", system_dirs=(),
                      files={"/w/a.c": b"/*" + b" " * (100 * 1024 * 1024) + b"*/"})
    with pytest.raises(JobRefused, match="exceed"):
        run_compile("gcc", huge, workdir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_different_compiler_under_the_same_name_has_another_identity(tmp_path):
    fake = tmp_path / "gcc"
    fake.write_text("#!/bin/sh\nexec /usr/bin/gcc \"$@\"\n")
    fake.chmod(0o755)
    assert compiler_identity("gcc") != compiler_identity(str(fake))
    assert compiler_identity("gcc") == compiler_identity("gcc")


def test_diagnostics_follow_the_initiators_locale(project):
    """GCC quotes 'x' in the C locale (LANG unset: CI jobs, cron) and ‘x’ in a UTF-8 one."""
    argv = ["gcc", *FLAGS, "-c", "src/bad.c", "-o", "obj/bad.o"]
    base = {k: v for k, v in os.environ.items() if k not in LOCALE_VARS}
    seen = set()
    for locale in ({"LC_ALL": "C"}, {"LANG": "C.UTF-8"}):
        local = subprocess.run(argv, cwd=project, capture_output=True, env=dict(base, **locale))
        assert split_compile(argv, project, locale=locale).diagnostics == local.stderr
        seen.add(local.stderr)
    assert len(seen) == 2


@pytest.mark.parametrize("locale", [{"LD_PRELOAD": "/tmp/evil.so"}, {"LANG": "C; rm -rf /"}, {"LC_ALL": "x" * 100}])
def test_a_locale_that_is_not_one_is_refused(locale, tmp_path):
    job = CompileJob(args=(), source="a.c", cwd="/w", files={"/w/a.c": b"int x;\n"}, system_dirs=())
    with pytest.raises(JobRefused, match="not a locale"):
        run_compile("gcc", job, workdir=str(tmp_path), locale=locale)


def _status_of_the_compile(tmp_path, user):
    """/proc/self/status of the process a helper runs as its compiler (a shell standing in)."""
    job = CompileJob(args=(), source="a.c", cwd="/w", system_dirs=(), files={"/w/a.c": b"int a;\n"})
    result = run_compile(["/bin/sh", "-c", "cat /proc/self/status >&2; exit 3", "sh"], job, workdir=str(tmp_path),
                         user=user)
    assert result.exit_code == 3, result
    return dict(line.split(":", 1) for line in result.diagnostics.decode().splitlines() if ":" in line)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_the_compiler_runs_as_the_user_with_no_groups_capabilities_or_new_privileges(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    status = _status_of_the_compile(tmp_path, "nobody")
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert status["Groups"].split() == []
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1"   # a setuid program it runs gains nothing


def test_a_compile_past_its_timeout_is_killed(tmp_path):
    pids = tmp_path / "pids"
    job = CompileJob(args=(), source="a.c", cwd="/w", system_dirs=(), files={"/w/a.c": b"int a;\n"})
    result = run_compile(["/bin/sh", "-c", f"echo $$ > {pids}; exec sleep 300", "sh"], job, workdir=str(tmp_path),
                         timeout=1.0)
    assert result.exit_code == 124 and b"timed out" in result.diagnostics
    assert not _alive(int(pids.read_text()))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_diagnostics_larger_than_a_pipe_come_back_whole_and_bounded(tmp_path):
    job = CompileJob(args=(), source="a.c", cwd="/w", system_dirs=(), files={"/w/a.c": b"int a;\n"})
    script = "head -c 300000 /dev/zero | tr '\\0' x >&2; exit 1"
    result = run_compile(["/bin/sh", "-c", script, "sh"], job, workdir=str(tmp_path))
    assert result.exit_code == 1 and result.diagnostics == b"x" * 300000
    script = "head -c 3000000 /dev/zero | tr '\\0' y >&2; exit 1"
    result = run_compile(["/bin/sh", "-c", script, "sh"], job, workdir=str(tmp_path))
    assert result.diagnostics == b"y" * MAX_DIAGNOSTICS
