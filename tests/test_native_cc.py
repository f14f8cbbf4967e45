"""The native `baton cc` (cli/native/baton_cc.c) against the Python one (cli/cc.py), real gcc:
the same argument rules (every rule of cli.cc_args, from its own tables), and, in
every case cli/cc.py handles, the same exit code, stderr, object, job record and
request to `baton run` (a real unix socket served with cli/ccwire.py); which one
`baton run` installs; and that the wire format is the documented one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cli import cc_args, ccwire
from cli import native as native_cc
from cli.cc import JOBS_LOG
from cli.run import install_wrappers

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
KINDS = ("python", "native")


@pytest.fixture(scope="module")
def wrappers(tmp_path_factory) -> dict[str, Path]:
    """Each kind's wrapper directory, as `baton run` writes it."""
    base = tmp_path_factory.mktemp("wrappers")
    dirs = {"python": install_wrappers(str(base / "python"), native=False),
            "native": install_wrappers(str(base / "native"))}
    assert os.path.islink(os.path.join(dirs["native"], "gcc")), "the native wrapper did not build"
    return {kind: Path(d) for kind, d in dirs.items()}


@pytest.fixture(scope="module")
def binary(wrappers) -> str:
    return os.path.realpath(wrappers["native"] / "gcc")


# ---- the argument rules ------------------------------------------------------------------------

def argvs() -> list[list[str]]:
    """Every rule of cli.cc_args, generated from its tables (a rule added there is tried here)."""
    base = ["cc", "-c", "a.c"]
    cases = [["cc"], ["cc", "a.o", "b.o", "-o", "app"], ["cc", "a.c", "-o", "app"], ["cc", "-c", "a.c", "b.c"],
             ["cc", "-c"], ["cc", "-c", "-"], ["cc", "@args.rsp"], ["cc", "-c", "a.c", "-o"], ["cc", "-c", "a.c", "-oout.o"],
             ["cc", "-c", "src/lib/a.c"], ["cc", "-c", "dir.x/a"], ["cc", "-c", "a.c.o"], ["cc", "-c", ".c"],
             ["cc", "-c", "..c"], ["cc", "-c", "dir/.c"], ["cc", "-c", "x/..y.c"], ["cc", "-c", "a.c", "--param"],
             ["cc", "-c", "a.c", "--param", "max-inline=3"], ["cc", "-c", "caf\u00e9.c"], ["cc", "-c", "a.f90"],
             ["cc", "-o", "x.o", "-c", "d/x.cc"], ["cc", "-c", "a.c", "--frobnicate"], ["cc", "-c", "a.c", "-"]]
    cases += [["cc", "-c", f"a{ext}"] for ext in [*cc_args.C_SOURCES, *cc_args.CXX_SOURCES, ".h", ".s", ".S", ""]]
    for flag in cc_args.PREPROCESSOR_WITH_VALUE + cc_args.DEPENDENCY_WITH_VALUE:
        cases += [[*base, flag, "v"], [*base, flag + "v"], [*base, flag], [flag, "-c", "a.c"]]
    for flag in (cc_args.DEPENDENCY_FLAGS + cc_args.PREPROCESSOR_FLAGS + cc_args.NATIVE
                 + ("-E", "-S", "-M", "-MM", "-MG", "-c", "-o")):
        cases += [[*base, flag], [*base, flag + "x"]]
    for prefix in cc_args.BOTH_PREFIXES + cc_args.UNSAFE_PREFIXES:
        cases += [[*base, prefix], [*base, prefix + "x=1"], [*base, prefix + "=y"]]
    # Dependency flags alone (GCC refuses them: local), with -MD/-MMD before or after, in pairs.
    lone = [["-MP"], *[[flag, "v"] for flag in cc_args.DEPENDENCY_WITH_VALUE],
            *[[flag + "v"] for flag in cc_args.DEPENDENCY_WITH_VALUE]]
    for first in lone:
        cases.append([*base, *first])
        for mode in ("-MD", "-MMD"):
            cases += [[*base, *first, mode], [*base, mode, *first], [mode, *first, "-c", "a.c", "-o", "b.o"]]
        cases += [[*base, *first, *second] for second in lone]
    return cases


def python_plan(argv: list[str]) -> bytes:
    decided = cc_args.plan(argv)
    if isinstance(decided, cc_args.Local):
        return b"local\0" + os.fsencode(decided.reason) + b"\0"
    return b"remote\0" + os.fsencode(decided.source) + b"\0" + os.fsencode(decided.output) + b"\0"


def test_the_native_argument_rules_are_cli_cc_args(binary):
    cases = argvs()
    assert len(cases) > 250
    for argv in cases:
        native = subprocess.run([binary, "--plan", *argv], capture_output=True, check=True).stdout
        assert native == python_plan(argv), argv


# ---- the same behaviour, case by case ----------------------------------------------------------

class RunServer:
    """`baton run`'s socket, answering each request with answer(request) (None: hang up)."""

    def __init__(self, run_dir: Path, answer):
        self.requests: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(run_dir / ccwire.SOCKET))
        self.sock.listen(8)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = ccwire.receive(conn)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is not None:
                    ccwire.send(conn, reply)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


def run_wrapper(kind, wrappers, workdir: Path, args: list[str], *, answer=None, env_extra=None, name="gcc"):
    """`name ARGS` through `kind`'s wrapper in `workdir` as under `baton run` (answer: None, no
    socket); its exit code, stderr, job records (times dropped) and the requests `baton run` got."""
    run_dir = workdir / f"run-{kind}"
    run_dir.mkdir()
    env = {**os.environ, "BATON_WRAPPER_DIR": str(wrappers[kind]), "BATON_RUN_DIR": str(run_dir), "MARK": "x",
           "PATH": os.pathsep.join([str(wrappers[kind]), os.environ["PATH"]]), **(env_extra or {})}
    server = RunServer(run_dir, answer) if answer else None
    try:
        done = subprocess.run([str(wrappers[kind] / name), *args], cwd=workdir, env=env, capture_output=True,
                              timeout=120)
    finally:
        if server:
            server.close()
    try:
        lines = (run_dir / JOBS_LOG).read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    records = [{k: v for k, v in json.loads(line).items() if k not in ("started", "finished", "duration")}
               for line in lines]
    return done.returncode, done.stderr, records, (server.requests if server else None), lines


def both(wrappers, tmp_path, args, prepare=None, **options):
    """run_wrapper for each kind in its own copy of the work directory; asserts they agree."""
    results = {}
    for kind in KINDS:
        workdir = tmp_path / kind
        workdir.mkdir()
        (workdir / "ok.c").write_text("int ok(void) { return 1; }\n")
        (workdir / "bad.c").write_text("int bad(void) { return nope; }\n")
        if prepare:
            prepare(workdir)
        results[kind] = run_wrapper(kind, wrappers, workdir, args, **options)
    python, native = results["python"], results["native"]
    assert native[:3] == python[:3]
    if python[3] is not None:   # the same requests: the real compiler, the directory (each its own), the env
        assert [same_request(r) for r in native[3]] == [same_request(r) for r in python[3]]
    return results


GCC = shutil.which("gcc")
# PWD too: the Python wrapper's /bin/sh sets it to the directory; the native one, like the
# compiler started by make, keeps the one it was given.
PER_KIND = ("BATON_WRAPPER_DIR", "BATON_RUN_DIR", "PATH", "PWD")


def same_request(request: dict) -> dict:
    """A request but for what differs between the two runs by design (each kind its own directories)."""
    return dict(request, cwd=os.path.dirname(request["cwd"]),
                env={k: v for k, v in request["env"].items() if k not in PER_KIND})


def test_a_helpers_object_diagnostics_and_exit_code_are_the_compiles(wrappers, tmp_path):
    answer = lambda req: {"helper": "agent-1", "exit_code": 0, "core": 1, "object": b"OBJECT\0\xff",  # noqa: E731
                          "diagnostics": b"ok.c:1: warning: w\n"}
    results = both(wrappers, tmp_path, ["-O2", "-c", "ok.c", "-o", "out/ok.o"], answer=answer,
                   prepare=lambda d: (d / "out").mkdir())
    code, stderr, records, requests, _ = results["native"]
    assert (code, stderr) == (0, b"ok.c:1: warning: w\n")
    assert records == [{"source": "ok.c", "helper": "agent-1", "exit_code": 0, "compiler": "gcc", "core": 1}]
    assert requests[0]["argv"] == [GCC, "-O2", "-c", "ok.c", "-o", "out/ok.o"]
    assert requests[0]["cwd"] == str(tmp_path / "native") and requests[0]["env"]["MARK"] == "x"
    for kind in KINDS:
        assert (tmp_path / kind / "out" / "ok.o").read_bytes() == b"OBJECT\0\xff"
        assert os.listdir(tmp_path / kind / "out") == ["ok.o"]   # no temporary file left


def test_when_the_job_held_the_helpers_core_is_recorded_alike(wrappers, tmp_path):
    """The build monitor draws a remote job where it held its core (cli/job_server.py), not from
    the wrapper's start: both wrappers record the times the reply gives, in seconds."""
    answer = lambda req: {"helper": "agent-1", "exit_code": 0, "core": 1, "object": b"O",  # noqa: E731
                          "diagnostics": b"", "core_started_ms": 1_764_000_000_123, "core_finished_ms": 1_764_000_001_250}
    results = both(wrappers, tmp_path, ["-c", "ok.c"], answer=answer)
    assert results["native"][2] == [{"source": "ok.c", "helper": "agent-1", "exit_code": 0, "compiler": "gcc",
                                     "core": 1, "core_started": 1_764_000_000.123, "core_finished": 1_764_000_001.25}]
    # The same fields (both() compared the values) in the same order; times print as %.3f or repr.
    assert list(json.loads(results["native"][4][0])) == list(json.loads(results["python"][4][0]))


def test_a_helpers_failed_compile_leaves_no_object_and_its_exit_code(wrappers, tmp_path):
    answer = lambda req: {"helper": "agent-2", "exit_code": 1, "core": 0, "object": b"",  # noqa: E731
                          "diagnostics": b"bad.c:1: error: nope\n"}
    results = both(wrappers, tmp_path, ["-c", "bad.c"], answer=answer,
                   prepare=lambda d: (d / "bad.o").write_bytes(b"stale"))
    code, stderr, records, _, _ = results["native"]
    assert (code, stderr, records[0]["exit_code"]) == (1, b"bad.c:1: error: nope\n", 1)
    assert not (tmp_path / "native" / "bad.o").exists() and not (tmp_path / "python" / "bad.o").exists()


@pytest.mark.parametrize("answer, why", [
    (lambda req: {"local": "no free helper core within 5 s"}, "no free helper core within 5 s"),
    (lambda req: {}, "baton run said so"),
    (lambda req: None, "baton run did not answer: the other end closed the connection mid-frame"),
])
def test_compile_it_here_because_compiles_here_and_says_why(wrappers, tmp_path, answer, why):
    results = both(wrappers, tmp_path, ["-c", "ok.c", "-o", "ok.o"], answer=answer)
    code, stderr, records, requests, _ = results["native"]
    assert (code, stderr, len(requests)) == (0, b"", 1)
    assert records == [{"source": "ok.c", "helper": "local", "exit_code": 0, "compiler": "gcc", "why_local": why}]
    assert (tmp_path / "native" / "ok.o").read_bytes() == (tmp_path / "python" / "ok.o").read_bytes()


@pytest.mark.parametrize("args, env_extra, why", [
    (["-c", "ok.c"], {}, "baton run serves no helper cores"),
    (["-c", "ok.c"], {"BATON_RUN_LOCAL_ONLY": "1"}, "baton run --local-only"),
    (["-march=native", "-c", "ok.c"], {}, "-march=native depends on this machine's processor"),
])
def test_what_never_reaches_baton_run_compiles_here(wrappers, tmp_path, args, env_extra, why):
    results = both(wrappers, tmp_path, args, env_extra=env_extra)
    code, _, records, _, _ = results["native"]
    assert code == 0 and records[0]["why_local"] == why


def test_a_local_compile_error_has_the_compilers_words_and_exit_code(wrappers, tmp_path):
    results = both(wrappers, tmp_path, ["-c", "bad.c", "-o", "bad.o"], answer=lambda req: {"local": "test"})
    code, stderr, records, _, _ = results["native"]
    plain = subprocess.run(["gcc", "-c", "bad.c", "-o", "bad.o"], cwd=tmp_path / "native", capture_output=True)
    assert (code, stderr) == (plain.returncode, plain.stderr) and code == 1 and b"nope" in stderr
    assert records[0]["exit_code"] == 1


def test_a_link_and_a_preprocess_are_no_jobs_and_never_reach_baton_run(wrappers, tmp_path):
    def prepare(d):
        subprocess.run(["gcc", "-c", "ok.c"], cwd=d, check=True)
        (d / "main.c").write_text("int ok(void);\nint main(void) { return ok() - 1; }\n")

    results = both(wrappers, tmp_path, ["main.c", "ok.o", "-o", "app"], prepare=prepare, answer=lambda req: {})
    assert results["native"][:4] == (0, b"", [], [])
    assert subprocess.run([str(tmp_path / "native" / "app")]).returncode == 0
    (tmp_path / "E").mkdir()
    results = both(wrappers, tmp_path / "E", ["-E", "-c", "ok.c", "-o", "ok.i"], answer=lambda req: {})
    assert results["native"][2] == [{"source": None, "helper": "local", "exit_code": 0, "compiler": "gcc",
                                     "why_local": "-E asks for no object"}]


@pytest.mark.parametrize("source", ['a "quoted" \\ name\n.c', "caf\u00e9.c", os.fsdecode(b"bad\xff.c"), "\x01\x7f.c",
                                    os.fsdecode(b"\xed\xa0\x80\xe1\x80.c")])
def test_the_job_record_is_byte_for_byte_the_pythons_whatever_the_source_is_called(wrappers, tmp_path, source):
    def prepare(d):
        (d / os.fsencode(source).decode("utf-8", "surrogateescape")).write_text("int x;\n")

    results = both(wrappers, tmp_path, ["-c", source, "-o", "x.o"], prepare=prepare,
                   env_extra={"BATON_RUN_LOCAL_ONLY": "1"})
    python, native = results["python"][4], results["native"][4]
    strip = lambda line: {k: v for k, v in json.loads(line).items()  # noqa: E731
                          if k not in ("started", "finished", "duration")}
    assert results["native"][0] == 0 and strip(native[0])["source"] == source
    # Byte for byte but the times: the same fields in the same order, the same escapes.
    cut = lambda line: line[:line.index(b',"started"')] + line[line.index(b',"exit_code"'):]  # noqa: E731
    assert cut(native[0]) == cut(python[0])


def test_a_compiler_killed_by_a_signal_is_a_negative_exit_code_in_the_record(wrappers, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gcc").write_text("#!/bin/sh\nkill -SEGV $$\n")
    (fake / "gcc").chmod(0o755)
    results = both(wrappers, tmp_path, ["-c", "ok.c"],
                   env_extra={"PATH": os.pathsep.join([str(fake), os.environ["PATH"]]), "BATON_RUN_LOCAL_ONLY": "1"})
    code, _, records, _, _ = results["native"]
    # PATH names the fake compiler first: the wrapper is found by its full path, not PATH.
    assert records[0]["exit_code"] == -signal.SIGSEGV and code == 256 - signal.SIGSEGV


def test_outside_baton_run_it_is_the_compiler_itself(wrappers, tmp_path):
    for kind in KINDS:
        env = {k: v for k, v in os.environ.items() if k != "BATON_RUN_DIR"}
        env.update(BATON_WRAPPER_DIR=str(wrappers[kind]), PATH=os.pathsep.join([str(wrappers[kind]), env["PATH"]]))
        (tmp_path / "x.c").write_text("int x(void) { return 2; }\n")
        done = subprocess.run([str(wrappers[kind] / "gcc"), "-O2", "-c", "x.c", "-o", f"{kind}.o"], cwd=tmp_path,
                              env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        missing = subprocess.run([str(wrappers[kind] / "gcc"), "-c", "none.c"], cwd=tmp_path, env=env,
                                 capture_output=True)
        plain = subprocess.run(["gcc", "-c", "none.c"], cwd=tmp_path, capture_output=True)
        assert (missing.returncode, missing.stderr) == (plain.returncode, plain.stderr)
    subprocess.run(["gcc", "-O2", "-c", "x.c", "-o", "plain.o"], cwd=tmp_path, check=True)
    assert (tmp_path / "native.o").read_bytes() == (tmp_path / "plain.o").read_bytes()


def test_the_native_wrapper_never_finds_itself_whatever_the_wrapper_directory_says(wrappers, tmp_path, binary):
    """A copy of the wrapper directory first on PATH, $BATON_WRAPPER_DIR naming another: it
    skips itself and runs gcc (instead of spawning itself for ever)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "gcc").symlink_to(binary)
    (tmp_path / "x.c").write_text("int x;\n")
    env = dict(os.environ, BATON_WRAPPER_DIR=str(tmp_path / "nowhere"),
               PATH=os.pathsep.join([str(elsewhere), os.environ["PATH"]]))
    env.pop("BATON_RUN_DIR", None)
    done = subprocess.run([str(elsewhere / "gcc"), "-c", "x.c"], cwd=tmp_path, env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 0 and (tmp_path / "x.o").exists()


def test_no_compiler_of_that_name_is_exit_127_as_for_python(wrappers, tmp_path):
    for kind in KINDS:
        run_dir = tmp_path / kind
        run_dir.mkdir()
        env = dict(os.environ, BATON_WRAPPER_DIR=str(wrappers[kind]), PATH=str(wrappers[kind]),
                   BATON_RUN_DIR=str(run_dir))
        done = subprocess.run([str(wrappers[kind] / "clang++"), "-c", "x.cc"], env=env, capture_output=True)
        assert done.returncode == 127 and b"clang++" in done.stderr and b"on PATH" in done.stderr


# ---- which wrapper `baton run` installs --------------------------------------------------------

def test_baton_run_installs_the_native_wrapper_where_a_c_compiler_builds_it(tmp_path):
    directory = install_wrappers(str(tmp_path / "w"))
    for name in ("cc", "gcc", "g++", "c++", "clang", "clang++"):
        target = os.readlink(os.path.join(directory, name))
        assert target.startswith(".native/baton-cc-"), target
    again = native_cc.build(directory)   # built once: the same binary, not built again
    assert again == (os.path.join(directory, target), "")


def test_without_a_c_compiler_or_with_a_broken_one_it_is_the_python_wrapper_and_says_why(tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    directory = install_wrappers(str(tmp_path / "w"), compilers_path=str(empty))
    assert not os.path.islink(os.path.join(directory, "gcc"))
    assert "cli.cc import main" in Path(directory, "gcc").read_text()
    assert "no C compiler" in capfd.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cc").write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 4\n")
    (broken / "cc").chmod(0o755)
    install_wrappers(str(tmp_path / "w2"), compilers_path=str(broken))
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "failed (exit 4): cc: internal error" in err
    # and back: the next run with a compiler replaces the scripts with the native wrapper
    install_wrappers(directory)
    assert os.readlink(os.path.join(directory, "gcc")).startswith(".native/")


def test_baton_cc_native_0_keeps_the_python_wrapper(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_CC_NATIVE", "0")
    directory = install_wrappers(str(tmp_path / "w"))
    assert not os.path.islink(os.path.join(directory, "cc"))


# ---- the wire ----------------------------------------------------------------------------------

def test_the_frame_is_the_documented_length_prefixed_fields():
    frame = ccwire.encode({"argv": ["gcc", "-c"], "exit_code": -1, "object": b"\x00", "local": None,
                           "env": {"A": "1"}})
    body = (b"\0\0\0\x04argv" b"l" b"\0\0\0\x0d" b"\0\0\0\x03gcc" b"\0\0\0\x02-c"
            b"\0\0\0\x09exit_code" b"i" b"\0\0\0\x08" + b"\xff" * 8 +
            b"\0\0\0\x06object" b"b" b"\0\0\0\x01" b"\x00"
            b"\0\0\0\x05local" b"n" b"\0\0\0\x00"
            b"\0\0\0\x03env" b"d" b"\0\0\0\x0a" b"\0\0\0\x01A" b"\0\0\0\x011")
    assert frame == len(body).to_bytes(8, "big") + body
    assert ccwire.decode(body) == {"argv": ["gcc", "-c"], "exit_code": -1, "object": b"\x00", "local": None,
                                   "env": {"A": "1"}}
    odd = {"s": os.fsdecode(b"bad\xff"), "f": 1.5, "t": True, "e": ""}
    assert ccwire.decode(ccwire.encode(odd)[8:]) == odd
    fields = list(ccwire.decode(body).items())
    between = {len(ccwire.encode(dict(fields[:n]))) - 8 for n in range(1, len(fields))}
    for cut in range(1, len(body)):
        if cut not in between:   # a cut between two fields is a shorter, valid frame; any other is not
            with pytest.raises(ValueError):
                ccwire.decode(body[:cut])
    with pytest.raises(ValueError):
        ccwire.encode({"x": object()})
