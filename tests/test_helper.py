"""The agent's Helper service (agent/helper.py) over real gRPC: a job under a
grant the agent holds compiles to the object a local compile makes; jobs
under unknown, stale or busy grants, or for another compiler, are refused."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import grpc
import pytest

from agent.compile_job import compiler_identity
from agent.helper import Grants, HelperServer, Refused
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


@pytest.fixture
def helper():
    grants = Grants()
    leader = {"epoch": 5}
    server = HelperServer("127.0.0.1:0", grants, lambda: leader["epoch"], workers=4)
    server.start()
    channel = grpc.insecure_channel(server.address("unused"))
    yield grants, leader, compile_pb2_grpc.HelperStub(channel)
    channel.close()
    server.stop()


def request(tmp_path, grant="g1", epoch=5, identity=None, source=b"int f(void) { return 42; }\n"):
    (tmp_path / "a.c").write_bytes(source)
    return pb.CompileRequest(grant=grant, epoch=epoch, compiler="gcc",
                             compiler_identity=identity or compiler_identity("gcc"), args=["-O2", "-g"],
                             source="a.c", cwd=str(tmp_path),
                             files=[pb.SourceFile(path=str(tmp_path / "a.c"), content=source)])


def test_a_job_under_a_held_grant_makes_the_local_object(helper, tmp_path):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    reply = stub.Compile(request(tmp_path), timeout=60)
    assert (reply.refused, reply.exit_code) == ("", 0)
    subprocess.run(["gcc", "-O2", "-g", "-c", "a.c", "-o", "local.o"], cwd=tmp_path, check=True)
    assert reply.object == (tmp_path / "local.o").read_bytes()


def test_a_job_with_dependency_flags_gets_the_local_dependency_file_back(helper, tmp_path):
    """The helper compiles with the job's -MMD and returns the .d a local compile writes (its
    job root taken out); a job without dependency flags, in the same reused root, gets none."""
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "a.h").write_bytes(b"int h(void);\n")
    deps = ["-MMD", "-MP", "-MT", "a.o", "-MFa.d"]
    job = request(tmp_path, source=b'#include "a.h"\nint f(void) { return h(); }\n')
    job.args.append(f"-I{tmp_path}/inc")
    job.files.append(pb.SourceFile(path=str(tmp_path / "inc" / "a.h"), content=(tmp_path / "inc" / "a.h").read_bytes()))
    job.dep_flags.extend(deps)
    reply = stub.Compile(job, timeout=60)
    subprocess.run(["gcc", "-O2", "-g", f"-I{tmp_path}/inc", *deps, "-c", "a.c", "-o", "local.o"], cwd=tmp_path,
                   check=True)
    assert (reply.refused, reply.exit_code, reply.has_depfile) == ("", 0, True)
    assert reply.depfile == (tmp_path / "a.d").read_bytes()
    assert reply.depfile.startswith(b"a.o: a.c") and reply.depfile.endswith(f"\n{tmp_path}/inc/a.h:\n".encode())
    assert reply.object == (tmp_path / "local.o").read_bytes()
    plain = stub.Compile(request(tmp_path), timeout=60)
    assert (plain.refused, plain.exit_code, plain.has_depfile, plain.depfile) == ("", 0, False, b"")


def test_a_compile_error_comes_back_with_the_compilers_exit_code(helper, tmp_path):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    reply = stub.Compile(request(tmp_path, source=b"int f(void) { return nope; }\n"), timeout=60)
    assert reply.refused == "" and reply.exit_code == 1 and b"nope" in reply.diagnostics and not reply.object


def test_jobs_without_a_held_grant_of_the_leaders_epoch_or_for_another_compiler_are_refused(helper, tmp_path):
    grants, leader, stub = helper
    assert "no such grant" in stub.Compile(request(tmp_path), timeout=30).refused
    grants.lend("g1", 1, 5)
    assert "different compiler" in stub.Compile(request(tmp_path, identity="0" * 64), timeout=30).refused
    assert "epoch" in stub.Compile(request(tmp_path, epoch=4), timeout=30).refused
    leader["epoch"] = 6   # a new leader: the old leader's grant takes no new jobs
    assert "older than the leader's 6" in stub.Compile(request(tmp_path), timeout=30).refused
    grants.lend("g2", 1, 6)
    grants.unlend("g2")
    assert "no such grant" in stub.Compile(request(tmp_path, grant="g2", epoch=6), timeout=30).refused


def test_a_grant_runs_at_most_its_slots_at_once():
    grants = Grants()
    grants.lend("g", 2, 3)
    held = threading.Event()
    release = threading.Event()

    def hold():
        with grants.slot("g", 3):
            held.set()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    held.wait(5)
    with pytest.raises(Refused, match="busy"):
        with grants.slot("g", 3, wait=0.05):
            pass
    release.set()
    for t in threads:
        t.join()
    with grants.slot("g", 3, wait=0.05):
        pass


def test_a_job_that_arrives_before_its_lend_waits_for_it():
    grants = Grants()
    timer = threading.Timer(0.05, grants.lend, ("g", 1, 2))
    timer.start()
    with grants.slot("g", 2, wait=10):
        pass
    timer.join()


# Hostile jobs (docs/design.md sections 8 and 9): refused, or contained by the
# unprivileged user the helper compiles as; the helper serves the next job.
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="a helper compiles as nobody only when it runs as root")


@as_root
@pytest.mark.parametrize("include", ["/etc/shadow", "a helper secret", "../" * 20 + "etc/shadow"])
def test_a_source_that_includes_the_helpers_own_files_reads_nothing_of_them(helper, tmp_path, include):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    secret = tmp_path / "cluster" / "agent-token"   # as `baton up` keeps it: 0600 in a 0700 directory
    secret.parent.mkdir(mode=0o700)
    secret.write_text("THE-AGENT-TOKEN\n")
    secret.chmod(0o600)
    include = str(secret) if include == "a helper secret" else include
    reply = stub.Compile(request(tmp_path, source=f'#include "{include}"\nint f(void) {{ return 1; }}\n'.encode()),
                         timeout=60)
    assert reply.refused == "" and reply.exit_code != 0 and b"Permission denied" in reply.diagnostics
    assert b"THE-AGENT-TOKEN" not in reply.diagnostics and b"root:" not in reply.diagnostics
    assert stub.Compile(request(tmp_path), timeout=60).exit_code == 0


@pytest.mark.parametrize("flags", [["-o", "/etc/passwd"], ["-fplugin=/tmp/evil.so"], ["-B/tmp/"],
                                   ["-specs=/tmp/evil.specs"], ["-Wl,-o,/etc/passwd"], ["-save-temps"]])
def test_absurd_flags_are_refused_before_anything_runs(helper, tmp_path, flags):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    before = Path("/etc/passwd").read_bytes()
    job = request(tmp_path)
    job.args.extend(flags)
    reply = stub.Compile(job, timeout=60)
    assert "does not compile with" in reply.refused and reply.exit_code == 0 and not reply.object
    assert Path("/etc/passwd").read_bytes() == before
    assert stub.Compile(request(tmp_path), timeout=60).exit_code == 0


def test_a_100_mb_source_is_refused_and_the_helper_goes_on(helper, tmp_path):
    grants, _, stub = helper
    grants.lend("g1", 1, 5)
    comment = b"/*" + b" " * (100 * 1024 * 1024) + b"*/\nint f(void) { return 1; }\n"
    with pytest.raises(grpc.RpcError) as refused:
        stub.Compile(request(tmp_path, source=comment), timeout=120)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Under the message bound but over the job's: refused before a file is written.
    reply = stub.Compile(request(tmp_path, source=comment[:70 * 1024 * 1024] + b"*/\n"), timeout=120)
    assert "exceed" in reply.refused
    assert stub.Compile(request(tmp_path), timeout=60).exit_code == 0


def test_a_new_stream_ends_the_grants_and_counts_the_jobs_still_running_until_they_end():
    told = []
    grants = Grants(on_carried=told.append)
    grants.lend("g", 2, 3)
    with contextlib.ExitStack() as first, contextlib.ExitStack() as second:
        first.enter_context(grants.slot("g", 3))
        second.enter_context(grants.slot("g", 3))
        assert grants.new_stream() == 2
        assert grants.slots() == {}
        with pytest.raises(Refused, match="no such grant"):
            with grants.slot("g", 3, wait=0.01):
                pass
        grants.lend("h", 1, 3)   # the next stream's grant: its job is not an ended grant's
        with grants.slot("h", 3):
            pass
        assert told == []
        first.close()
        assert told == [1]
    assert told == [1, 0]
    assert grants.new_stream() == 0


@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++ as a second compiler")
def test_a_compiler_name_turned_to_another_compiler_is_no_longer_the_known_one(tmp_path, monkeypatch):
    """Compilers remembers where it found a name: a link retargeted (an upgrade's gcc -> gcc-13)
    is seen at the next job, never compiled with under the old identity."""
    from agent.compile_job import CLEAN_ENV
    from agent.helper import Compilers, NoSuchCompiler

    monkeypatch.setitem(CLEAN_ENV, "PATH", f"{tmp_path}:{CLEAN_ENV['PATH']}")
    link = tmp_path / "mycc"
    link.symlink_to(os.path.realpath(shutil.which("gcc")))
    compilers = Compilers()
    gcc = compiler_identity(str(link))
    assert compilers.matching("mycc", gcc) == str(link)
    link.unlink()
    link.symlink_to(os.path.realpath(shutil.which("g++")))
    with pytest.raises(NoSuchCompiler, match="different compiler"):
        compilers.matching("mycc", gcc)
    assert compilers.matching("mycc", compiler_identity(str(link))) == str(link)
    link.unlink()
    with pytest.raises(NoSuchCompiler, match="has no mycc"):
        compilers.matching("mycc", gcc)
