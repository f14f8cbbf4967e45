"""`baton run` and `baton cc` around real build tools (make, CMake + Ninja), as a
developer runs them: exit codes, the build id and summary lines, job records,
and a CMake tree configured under `baton run` that keeps building without it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make")), reason="needs gcc and make")

MAKEFILE = """\
all: app
app: main.o util.o
\t$(CC) main.o util.o -o app
%.o: %.c
\t$(CC) -O2 -g -MD -c $< -o $@
-include *.d
"""


def baton(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(params=["native", "python"])
def env(tmp_path, request):
    """Each test with each compiler wrapper: the native one (cli/native) and the Python one (cli/cc.py)."""
    # No cluster: etcd is a port bound here and never listened on, so every connect is refused at once
    # (the default 127.0.0.1:2379 may be some other test's or benchmark's etcd).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield dict(os.environ, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(tmp_path / "wrappers"),
                   BATON_ETCD=f"http://127.0.0.1:{closed.getsockname()[1]}",
                   BATON_CC_NATIVE="1" if request.param == "native" else "0")


def wrapper_kind(env: dict) -> str:
    return "native" if os.path.islink(os.path.join(env["BATON_WRAPPER_DIR"], "cc")) else "python"


@pytest.fixture
def make_project(tmp_path):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "Makefile").write_text(MAKEFILE)
    (src / "util.h").write_text("int util(void);\n")
    (src / "main.c").write_text('#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", util()); '
                                "return 0; }\n")
    (src / "util.c").write_text('#include "util.h"\nint util(void) { return 42; }\n')
    return src


def test_a_make_build_runs_and_its_compiles_are_jobs(make_project, env):
    done = baton("run", "--json", "--", "make", "-j2", cwd=make_project, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0].startswith("baton run: build ")
    figures = json.loads(done.stdout.splitlines()[-1])
    assert (figures["jobs"], figures["local"], figures["exit_code"]) == (2, 2, 0)
    assert "2 jobs (0 remote, 2 local)" in done.stderr.splitlines()[-1]
    assert subprocess.run(["./app"], cwd=make_project, capture_output=True, text=True).stdout == "42\n"
    assert (make_project / "main.d").read_text().startswith("main.o: main.c")
    assert wrapper_kind(env) == ("native" if env["BATON_CC_NATIVE"] == "1" else "python")


def test_a_compile_error_fails_the_build_with_makes_exit_code_and_the_compilers_words(make_project, env):
    (make_project / "util.c").write_text("int util(void) { return nope; }\n")
    done = baton("run", "--", "make", cwd=make_project, env=env)
    plain = subprocess.run(["make"], cwd=make_project, capture_output=True, text=True)
    assert done.returncode == plain.returncode == 2
    for out in (done.stderr, plain.stderr):  # quotes depend on the locale
        assert "nope" in out and "undeclared" in out
    assert "exit 2" in done.stderr.splitlines()[-1]


def test_baton_cc_outside_baton_run_is_the_compiler_itself(make_project, env, tmp_path):
    env = {k: v for k, v in env.items() if k != "BATON_RUN_DIR"}
    done = baton("cc", "gcc", "-O2", "-g", "-c", "util.c", "-o", "wrapped.o", cwd=make_project, env=env)
    assert done.returncode == 0, done.stderr
    subprocess.run(["gcc", "-O2", "-g", "-c", "util.c", "-o", "plain.o"], cwd=make_project, check=True)
    assert (make_project / "wrapped.o").read_bytes() == (make_project / "plain.o").read_bytes()


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ninja")), reason="needs cmake and ninja")
def test_a_cmake_tree_configured_under_baton_run_keeps_building_without_it(make_project, env, tmp_path):
    (make_project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(p C)\nadd_executable(app main.c util.c)\n")
    build = tmp_path / "build"
    configured = baton("run", "--", "cmake", "-S", str(make_project), "-B", str(build), "-G", "Ninja",
                       cwd=tmp_path, env=env)
    assert configured.returncode == 0, configured.stderr
    cache = (build / "CMakeCache.txt").read_text()
    assert f"CMAKE_C_COMPILER:FILEPATH={tmp_path / 'wrappers' / 'cc'}" in cache
    built = baton("run", "--json", "--", "cmake", "--build", str(build), cwd=tmp_path, env=env)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout.splitlines()[-1])["jobs"] == 2
    (make_project / "util.c").write_text('#include "util.h"\nint util(void) { return 7; }\n')
    outside = subprocess.run(["cmake", "--build", str(build)], cwd=tmp_path, env=env, capture_output=True,
                             text=True)
    assert outside.returncode == 0, outside.stderr
    assert subprocess.run([str(build / "app")], capture_output=True, text=True).stdout == "7\n"
    assert wrapper_kind(env) == ("native" if env["BATON_CC_NATIVE"] == "1" else "python")


def test_baton_run_without_a_command_is_a_usage_error(tmp_path, env):
    done = baton("run", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "baton run -- make" in done.stderr


def test_the_example_project_builds_under_baton_run_and_its_program_runs(env, tmp_path):
    project = tmp_path / "greet"
    shutil.copytree(ROOT / "examples" / "greet", project)
    done = baton("run", "--json", "--", "make", "-j8", cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["jobs"] == 3
    ran = subprocess.run(["./greet"], cwd=project, capture_output=True, text=True)
    assert ran.stdout == "hello from the farm (16 letters)\n"


def without_locale(env: dict) -> dict:
    """`env` as a user without any locale setting has it (Python then coerces its own, PEP 538)."""
    return {k: v for k, v in env.items() if k not in ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LANGUAGE",
                                                      "PYTHONCOERCECLOCALE", "PYTHONUTF8")}


SHOW_LC_CTYPE = ["sh", "-c", 'echo "LC_CTYPE=${LC_CTYPE-unset}"']


def test_a_build_under_baton_run_sees_no_locale_python_coerced(tmp_path, env):
    """Python sets LC_CTYPE=C.UTF-8 in its own environment when none is set; the build must not get it."""
    done = baton("run", "--local-only", "--", *SHOW_LC_CTYPE, cwd=tmp_path, env=without_locale(env))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "LC_CTYPE=unset"


def test_a_locale_the_user_set_reaches_the_build_under_baton_run(tmp_path, env):
    done = baton("run", "--local-only", "--", *SHOW_LC_CTYPE, cwd=tmp_path,
                 env=dict(without_locale(env), LC_CTYPE="C.UTF-8"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "LC_CTYPE=C.UTF-8"


def test_a_local_compile_under_baton_run_quotes_as_plain_make_does(make_project, env):
    """No locale set: gcc's words in the C locale ('x'), under `baton run` as under plain make."""
    (make_project / "util.c").write_text("int util(void) { return missing; }\n")
    plain = subprocess.run(["make", "util.o", "CC=gcc"], cwd=make_project, env=without_locale(env),
                           capture_output=True, text=True)
    assert "'missing'" in plain.stderr, plain.stderr
    done = baton("run", "--local-only", "--", "make", "util.o", cwd=make_project, env=without_locale(env))
    assert done.returncode != 0
    assert "'missing' undeclared" in done.stderr, done.stderr


@pytest.mark.parametrize("given, sent", [({}, {"LANG": "C"}), ({"LC_CTYPE": "C.UTF-8"}, {"LC_CTYPE": "C.UTF-8"})])
def test_baton_cc_sends_helpers_the_users_locale_not_pythons(tmp_path, env, given, sent):
    """`baton cc` is a Python process too: the locale it sends with a job is the one it was started with."""
    import threading

    from cli import ccwire
    from cli.job_server import job_locale

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "x.c").write_text("int x(void) { return 1; }\n")
    headers = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(run_dir / ccwire.SOCKET))
        server.listen(1)

        def answer():
            conn, _ = server.accept()
            with conn:
                headers.append(ccwire.receive(conn))
                ccwire.send(conn, {"local": "the test says so"})

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        done = baton("cc", "gcc", "-c", "x.c", "-o", "x.o", cwd=tmp_path,
                     env=dict(without_locale(env), BATON_RUN_DIR=str(run_dir), **given))
        thread.join(60)
    assert done.returncode == 0, done.stderr
    assert job_locale(headers[0]["env"]) == sent


NOT_RECORDED = "baton run: the build was not recorded: no coordinator was reached"


def test_with_etcd_unreachable_baton_run_does_not_wait_for_a_record(make_project, env):
    """No coordinator was ever reached: nobody can record the build, so `baton run` ends when
    COMMAND does, saying so, instead of waiting for the record (it used to wait ~10 s)."""
    done = baton("run", "--json", "--", "true", cwd=make_project, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-2] == NOT_RECORDED and lines[-1].startswith("baton run: 0 jobs"), done.stderr
    assert "did not record the build's end" not in done.stderr   # the wait for the record, given up
    assert json.loads(done.stdout.splitlines()[-1])["recorded"] is False


def test_with_etcd_unreachable_compiles_go_local_without_waiting_out_the_remote_wait(make_project, env):
    """A job waits for a leader only briefly while none was ever seen (cli.core_client.FIRST_LEADER_WAIT),
    not the remote wait: with --remote-wait 600 the build still ends (the old code waited 600 s a job)."""
    done = subprocess.run([sys.executable, "-m", "cli", "run", "--json", "--remote-wait", "600", "--",
                           "make", "-j2"], cwd=make_project, env=env, capture_output=True, text=True,
                          timeout=100)   # a failure bound only (the old code: 600 s a job)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert (figures["jobs"], figures["local"], figures["recorded"]) == (2, 2, False)
    assert NOT_RECORDED in done.stderr.splitlines()
    assert subprocess.run(["./app"], cwd=make_project, capture_output=True, text=True).stdout == "42\n"


# Python that registers a teardown hook, then runs the `baton` program (cli.main.entry) on argv.
WITH_TEARDOWN_HOOK = ("import atexit, sys; atexit.register(lambda: print('torn down', flush=True)); "
                      "sys.argv[0] = 'baton'; from cli.main import entry; entry()")


def test_baton_run_ends_without_the_interpreters_teardown_and_keeps_its_output_and_code(tmp_path, env):
    # The teardown took 30-60 ms of every build's wall; `baton run`'s work is done and written by then.
    done = subprocess.run([sys.executable, "-c", WITH_TEARDOWN_HOOK, "run", "--local-only", "--json", "--",
                           "sh", "-c", "echo from the build; exit 7"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 7
    assert "torn down" not in done.stdout
    assert done.stdout.splitlines()[0] == "from the build"
    assert json.loads(done.stdout.splitlines()[-1])["exit_code"] == 7   # a pipe's buffer, flushed
    assert "baton run: 0 jobs" in done.stderr
    # Other commands (the daemons among them) end as Python programs do.
    other = subprocess.run([sys.executable, "-c", WITH_TEARDOWN_HOOK, "status"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 4, other.stderr   # etcd unreachable (the fixture's closed port)
    assert other.stdout.rstrip().endswith("torn down")
