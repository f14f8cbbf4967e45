"""cli/include_scan.py: the include lines name a superset of what the preprocessor reads, or say Unsure.

Each superset is checked against the compiler's own scan (cli/compile_scan.py,
`-M -H`) of the same compile on real files."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.compile_job import CompileJob, run_compile
from cli.cc_args import plan
from cli.compile_scan import Scan, Unshippable, input_paths, scan, system_dirs
from cli.file_hashes import FileHashes
from cli.include_scan import IncludeScan, Unsure, include_names

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def files_of(scanner: IncludeScan, argv: list[str], cwd: Path, env: dict | None = None) -> set[str]:
    decided = plan(argv)
    return set(scanner.files(decided, str(cwd), env or {}, system_dirs(decided.compiler, decided.language), {}))


def preprocessor_reads(argv: list[str], cwd: Path) -> set[str]:
    decided = plan(argv)
    return set(input_paths(decided, str(cwd), scan(decided, str(cwd))))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Quote and bracket includes, a subdirectory, #include_next through two directories, a
    literal __has_include, an include behind `#if 0` of a missing header, and a name in two
    -I directories (the first one wins)."""
    src = tmp_path / "proj"
    write(src / "main.c", '#include "local.h"\n#include <lib/api.h>\n#include <wrap.h>\n#include <stdio.h>\n'
                          "#if __has_include(<opt.h>)\n#define HAVE_OPT 1\n#endif\n"
                          '#if 0\n#include "never_there.h"\n#endif\nint main(void) { return API + WRAP; }\n')
    write(src / "local.h", "#define LOCAL 1\n")
    write(src / "inc" / "lib" / "api.h", '#include "detail.h"\n#define API DETAIL\n')
    write(src / "inc" / "lib" / "detail.h", "#define DETAIL 2\n")
    write(src / "inc" / "wrap.h", "#include_next <wrap.h>\n")
    write(src / "more" / "wrap.h", "#define WRAP 3\n")
    write(src / "more" / "opt.h", "#define OPT 4\n")
    write(src / "more" / "lib" / "api.h", "#error shadowed\n")
    return src


def test_the_include_lines_name_every_file_the_preprocessor_reads(project):
    argv = ["gcc", "-O2", "-Iinc", f"-I{project / 'more'}", "-MD", "-c", "main.c", "-o", "main.o"]
    named = files_of(IncludeScan(FileHashes()), argv, project)
    read = preprocessor_reads(argv, project)
    assert read <= named, read - named
    # Every match of each name is shipped (the compiler finds the first here and there alike),
    # the __has_include'd header too; a name found nowhere is not an error.
    assert {str(project / "more" / "lib" / "api.h"), str(project / "more" / "opt.h")} <= named
    assert not any("never_there" in path for path in named)


def test_include_names_reads_directives_not_prose():
    text = (b"/* A comment:\n   #include's protect themselves\n*/\n"
            b"/* before */ #include <a.h>\n#  include_next \"b.h\" // why\n#inc\\\nlude <c.h>\n"
            b"#if __has_include(<d.h>)\n#endif\nint x; /* #include \"e.h\" is prose here */\n")
    assert include_names(text) == ("a.h", "b.h", "c.h", "d.h")
    assert include_names(b"int main(void) { return 0; }\n") == ()


@pytest.mark.parametrize("line", [b"#include HEADER\n", b"#embed \"data.bin\"\n", b"#pragma GCC dependency \"x.y\"\n",
                                  b"%:include <a.h>\n", b"#if __has_include(NAME)\n#endif\n"])
def test_what_only_the_preprocessor_can_read_is_unsure(line):
    assert include_names(b"int a;\n" + line) is None


def test_an_unsure_header_anywhere_in_the_tree_makes_the_compile_unsure(project):
    write(project / "inc" / "lib" / "detail.h", "#define H <stdio.h>\n#include H\n")
    with pytest.raises(Unsure, match="detail.h"):
        files_of(IncludeScan(FileHashes()), ["gcc", "-Iinc", "-c", "main.c"], project)


@pytest.mark.parametrize("argv, env", [
    (["gcc", "-include", "local.h", "-c", "main.c"], {}),
    (["gcc", "-Iinc", "-iprefix", "/opt/", "-iwithprefix", "inc", "-c", "main.c"], {}),
    (["gcc", "-Iinc", "-I-", "-c", "main.c"], {}),
    (["gcc", "-Iinc", "-c", "main.c"], {"CPATH": "/usr/local/include"}),
])
def test_flags_and_variables_that_move_includes_are_unsure(project, argv, env):
    with pytest.raises(Unsure):
        files_of(IncludeScan(FileHashes()), argv, project, env)


def test_a_precompiled_header_next_to_a_header_is_unsure(project):
    (project / "local.h.gch").write_bytes(b"gpch")
    with pytest.raises(Unsure, match="precompiled"):
        files_of(IncludeScan(FileHashes()), ["gcc", "-Iinc", "-c", "main.c"], project)


def test_a_header_that_appears_between_two_jobs_is_shipped_in_the_second(project):
    """A generated header shadowing another (an earlier -I directory): the directory changed,
    so what was resolved before is not trusted; also when that happens within the same
    timestamp tick as the listing (a racy listing is listed again at each job)."""
    scanner = IncludeScan(FileHashes())
    argv = ["gcc", "-Igen", "-Iinc", "-Imore", "-c", "main.c"]
    (project / "gen" / "lib").mkdir(parents=True)
    first = files_of(scanner, argv, project)
    assert str(project / "gen" / "lib" / "api.h") not in first
    write(project / "gen" / "lib" / "api.h", "#define API 9\n")
    second = files_of(scanner, argv, project)
    assert str(project / "gen" / "lib" / "api.h") in second
    assert preprocessor_reads(argv, project) <= second


def test_a_settled_directory_is_trusted_by_its_stamp_and_a_changed_one_listed_again(project):
    """With listings older than the racy window (a clock 10 s ahead), a second job lists nothing
    again; a directory whose stamp moved is listed again and its new header found."""
    clock = [0]
    scanner = IncludeScan(FileHashes(), clock_ns=lambda: os.stat(project).st_mtime_ns + 10**10 + clock[0])
    argv = ["gcc", "-Iinc", "-c", "main.c"]
    files_of(scanner, argv, project)
    listed = []
    original = scanner.directories._list
    scanner.directories._list = lambda path: listed.append(path) or original(path)
    files_of(scanner, argv, project)
    assert listed == []
    os.unlink(project / "local.h")
    write(project / "inc" / "local.h", "#define LOCAL 5\n")
    clock[0] = 10**10
    named = files_of(scanner, argv, project)
    assert str(project) in listed and str(project / "inc") in listed
    assert str(project / "inc" / "local.h") in named and str(project / "local.h") not in named


def test_a_symlinked_header_is_followed_at_each_job(project):
    """A dangling symlink's target appearing does not change its directory's stamp."""
    scanner = IncludeScan(FileHashes())
    os.unlink(project / "local.h")
    (project / "real").mkdir()   # (made now: making it later would change the project's stamp)
    os.symlink(project / "real" / "local.h", project / "local.h")
    argv = ["gcc", "-Iinc", "-c", "main.c"]
    assert str(project / "local.h") not in files_of(scanner, argv, project)
    write(project / "real" / "local.h", "#define LOCAL 6\n")
    assert str(project / "local.h") in files_of(scanner, argv, project)


def test_a_header_edited_to_include_another_adds_it_in_the_next_job(project):
    """No directory changes (extra.h was there all along): the tree kept from the last job
    stands only while each of its files is as it was."""
    scanner = IncludeScan(FileHashes())
    write(project / "extra.h", "#define EXTRA 7\n")
    argv = ["gcc", "-Iinc", "-Imore", "-c", "main.c"]
    assert str(project / "extra.h") not in files_of(scanner, argv, project)
    assert str(project / "extra.h") not in files_of(scanner, argv, project)   # the kept tree
    (project / "local.h").write_text('#include "extra.h"\n#define LOCAL 1\n')
    assert str(project / "extra.h") in files_of(scanner, argv, project)


def test_a_header_two_sources_share_is_walked_once_and_followed_when_edited(project):
    """The second source's tree takes the shared header's kept reach (only its own include
    lines resolved), names what a fresh scanner names, and sees an edit of a header in that
    reach made between the two jobs (no directory changes: extra.h was there all along)."""
    write(project / "other.c", "#include <lib/api.h>\nint other(void) { return API; }\n")
    write(project / "inc" / "lib" / "extra.h", "#define EXTRA 7\n")
    scanner = IncludeScan(FileHashes(clock_ns=lambda: time.time_ns() + 10**12))   # every file settled
    resolved = []
    resolve = scanner._resolve
    scanner._resolve = lambda own, name, chain: resolved.append(name) or resolve(own, name, chain)
    flags = ["gcc", "-Iinc", "-Imore", "-c"]
    files_of(scanner, [*flags, "main.c"], project)
    del resolved[:]
    other = files_of(scanner, [*flags, "other.c"], project)
    assert resolved == ["lib/api.h"]
    assert other == files_of(IncludeScan(FileHashes()), [*flags, "other.c"], project)
    assert str(project / "inc" / "lib" / "extra.h") not in other
    (project / "inc" / "lib" / "detail.h").write_text('#include "extra.h"\n#define DETAIL EXTRA\n')
    assert str(project / "inc" / "lib" / "extra.h") in files_of(scanner, [*flags, "other.c"], project)


class TellingLock:
    """A lock that says when a second thread is waiting for it."""

    def __init__(self):
        self._lock, self.contended = threading.Lock(), threading.Event()

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            self.contended.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def test_jobs_that_arrive_together_walk_a_shared_header_once(project):
    """A run's first jobs arrive together: the second waits for the first's walk of the header
    they share and takes its reach, rather than reading and walking the same files again."""
    write(project / "other.c", "#include <lib/api.h>\nint other(void) { return API; }\n")
    write(project / "third.c", "#include <lib/api.h>\nint third(void) { return API; }\n")
    scanner = IncludeScan(FileHashes(clock_ns=lambda: time.time_ns() + 10**12))
    scanner._walking = TellingLock()
    inside, resolved = threading.Event(), []
    resolve = scanner._resolve

    def slow_resolve(own, name, chain):   # the first walk stops inside lib/api.h until let go
        resolved.append(name)
        if name == "detail.h" and not inside.is_set():
            inside.set()
            assert scanner._walking.contended.wait(30), "the second job did not wait for the walk"
        return resolve(own, name, chain)
    scanner._resolve = slow_resolve
    flags = ["gcc", "-Iinc", "-Imore", "-c"]
    found = {}
    first = threading.Thread(target=lambda: found.update(other=files_of(scanner, [*flags, "other.c"], project)),
                             daemon=True)
    first.start()
    assert inside.wait(30)
    found["third"] = files_of(scanner, [*flags, "third.c"], project)
    assert resolved.count("detail.h") == 1   # lib/api.h's lines walked once, by the first job
    first.join(30)
    assert found["other"] - {str(project / "other.c")} == found["third"] - {str(project / "third.c")}
    assert str(project / "inc" / "lib" / "detail.h") in found["third"]


@pytest.fixture
def climbing(tmp_path: Path) -> Path:
    """A make project built in a subdirectory: -I../include, the source ../src/x.c, and
    `#include "../common/config.h"` from the source and from a header."""
    proj = tmp_path / "climb"
    write(proj / "include" / "util.h", '#include <stdio.h>\n#include "../common/config.h"\nint util(int);\n')
    write(proj / "common" / "config.h", "#define SCALE 3\n")
    write(proj / "src" / "x.c", '#include "util.h"\n#include "../common/config.h"\n'
                                'int util(int a) { return printf("%d", a * SCALE); }\n')
    (proj / "build").mkdir()
    (proj / "empty").mkdir()
    return proj


CLIMBING = ["gcc", "-O2", "-g", "-I../include", "-MD", "-c", "../src/x.c", "-o", "x.o"]


def test_relative_paths_that_climb_name_a_superset_at_normalised_paths(climbing):
    build = climbing / "build"
    named = files_of(IncludeScan(FileHashes()), CLIMBING, build)
    read = preprocessor_reads(CLIMBING, build)
    assert read <= named, read - named
    assert {str(climbing / "src" / "x.c"), str(climbing / "common" / "config.h")} <= named
    assert not [path for path in named if "/.." in path or "/./" in path]


def test_a_helper_given_those_files_compiles_the_local_object_and_dependency_file(climbing, tmp_path):
    """The job as `baton run` sends it from the include lines: the helper writes the .d."""
    build = climbing / "build"
    assert subprocess.run(CLIMBING, cwd=build, capture_output=True).returncode == 0
    local_obj, local_dep = (build / "x.o").read_bytes(), (build / "x.d").read_bytes()
    decided = plan(CLIMBING)
    dirs = system_dirs(decided.compiler, decided.language)
    named = IncludeScan(FileHashes()).files(decided, str(build), {}, dirs, {})
    paths = input_paths(decided, str(build), Scan(headers=tuple(named[1:])))
    job = CompileJob(args=decided.flags, source=decided.source, cwd=str(build), system_dirs=dirs,
                     files={path: Path(path).read_bytes() for path in paths}, dep_flags=decided.dep_flags)
    result = run_compile(decided.compiler, job, workdir=str(tmp_path))
    assert (result.exit_code, result.diagnostics) == (0, b"")
    assert result.object == local_obj and result.depfile == local_dep
    assert b"../src/../common/config.h" in local_dep


def test_a_dotdot_out_of_a_symlinked_directory_is_unsure(climbing, tmp_path):
    """build/link -> elsewhere/deep: `link/..` is elsewhere here, build textually. The
    preprocessor reads elsewhere's header; the scan route refuses it too (Unshippable)."""
    write(tmp_path / "elsewhere" / "include" / "util.h", "#include <stdio.h>\nint util_elsewhere(int);\n")
    (tmp_path / "elsewhere" / "deep").mkdir()
    os.symlink(tmp_path / "elsewhere" / "deep", climbing / "build" / "link")
    argv = ["gcc", "-Ilink/../include", "-c", "../src/x.c", "-o", "x.o"]
    with pytest.raises(Unsure, match="link"):
        files_of(IncludeScan(FileHashes()), argv, climbing / "build")
    preprocessed = subprocess.run(["gcc", "-Ilink/../include", "-E", "../src/x.c"], cwd=climbing / "build",
                                  capture_output=True, check=True).stdout
    assert b"util_elsewhere" in preprocessed    # not climb/include/util.h, which normpath names
    with pytest.raises(Unshippable, match="link"):
        scan(plan(argv), str(climbing / "build"))


def test_an_includer_in_a_symlinked_directory_is_unsure(climbing, tmp_path):
    """`#include "../common/config.h"` in outside/s/x.c, outside/s -> climb/src: the compiler
    opens climb/common/config.h, the textual path outside/common/config.h."""
    (tmp_path / "outside").mkdir()
    os.symlink(climbing / "src", tmp_path / "outside" / "s")
    argv = ["gcc", "-I../include", "-c", str(tmp_path / "outside" / "s" / "x.c"), "-o", "x.o"]
    assert subprocess.run(argv, cwd=climbing / "build", capture_output=True).returncode == 0
    with pytest.raises(Unsure, match="symbolic link"):
        files_of(IncludeScan(FileHashes()), argv, climbing / "build")


def test_a_directory_that_becomes_a_symlink_between_jobs_is_unsure_in_the_second(climbing, tmp_path):
    scanner = IncludeScan(FileHashes())
    build = climbing / "build"
    files_of(scanner, CLIMBING, build)
    shutil.copytree(climbing / "src", tmp_path / "src-copy")
    shutil.rmtree(climbing / "src")
    os.symlink(tmp_path / "src-copy", climbing / "src")
    with pytest.raises(Unsure, match="symbolic link"):
        files_of(scanner, CLIMBING, build)


@pytest.mark.parametrize("include, why", [
    ("-I../empty", "holds none of the job's files"),    # the helper lacks it: a '..' there finds nothing
    ("-I../gone", "not here"),                          # missing here: a helper's old empty one might find it
    ("-Igone/../../include", "no directory here"),     # GCC drops it here; the helper would make gone/
])
def test_a_dotdot_a_helper_might_resolve_otherwise_is_unsure(climbing, include, why):
    argv = ["gcc", include, "-I../include", "-c", "../src/x.c", "-o", "x.o"]
    with pytest.raises(Unsure, match=why):
        files_of(IncludeScan(FileHashes()), argv, climbing / "build")


def test_an_include_that_climbs_above_the_root_is_unsure(climbing):
    depth = len(climbing.parts)
    (climbing / "src" / "x.c").write_text(f'#include "{"../" * depth}etc/hostname"\n')
    with pytest.raises(Unsure, match="above /"):
        files_of(IncludeScan(FileHashes()), CLIMBING, climbing / "build")
