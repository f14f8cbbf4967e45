"""Helpers keep compile inputs by hash (agent/input_store.py); the initiator
sends only the contents a helper lacks (cli/job_inputs.py, cli/job_server.py
JobServer). Over real gRPC with the real compiler: a header changed between
two jobs is compiled from its new content, a content that does not hash to
its claim is refused, a helper that lost contents gets them again, and the
store stays within its bound."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import grpc
import pytest

from agent.compile_job import CompileJob, InputsMissing, compiler_identity, run_compile
from agent.helper import Grants, HelperServer
from agent.input_store import ContentMismatch, InputStore
from agent.job_root import RootPool
from cli.job_server import JobServer
from cli.job_inputs import Digests
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc
from tests.harness.cores import OneGrant

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


class Recording(JobServer):
    """Keeps each request it sends, to see which contents travelled."""

    def __init__(self, *args):
        super().__init__(*args)
        self.sent: list[pb.CompileRequest] = []

    def _send(self, grant, request, compiler):
        reply = super()._send(grant, request, compiler)
        self.sent.append(pb.CompileRequest.FromString(request.SerializeToString()))
        return reply


@pytest.fixture
def farm(tmp_path):
    grants = Grants()
    grants.lend("g1", 4, 5)
    helper = HelperServer("127.0.0.1:0", grants, lambda: 5, workers=4, workdir=str(tmp_path / "agent"))
    helper.start()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    jobs = Recording(str(run_dir), OneGrant(helper.address("127.0.0.1"), agent="h1"), 1.0).start()
    yield helper, jobs
    jobs.stop()
    helper.stop()


@pytest.fixture
def project(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text('#include "conf.h"\n#include <stdio.h>\nint a(void) { return VALUE; }\n')
    (tmp_path / "src" / "b.c").write_text('#include "conf.h"\nint b(void) { return VALUE + 1; }\n')
    (tmp_path / "src" / "conf.h").write_text("#define VALUE 1\n")
    return tmp_path / "src"


def remote(jobs, cwd, source):
    argv = [shutil.which("gcc"), "-O2", "-g", "-MD", "-c", source, "-o", source[:-2] + ".o"]
    reply = jobs.compile({"argv": argv, "cwd": str(cwd), "env": dict(os.environ)})
    assert "helper" in reply, reply
    assert reply["exit_code"] == 0, reply["diagnostics"]
    local = subprocess.run([*argv[:-1], "local.o"], cwd=cwd, check=True, capture_output=True)
    assert local.returncode == 0
    return reply["object"], (cwd / "local.o").read_bytes()


def contents_sent(request: pb.CompileRequest) -> set[str]:
    return {os.path.basename(f.path) for f in request.inputs if f.content}


def test_a_header_changed_between_two_jobs_is_compiled_from_its_new_content(farm, project):
    helper, jobs = farm
    first, local = remote(jobs, project, "a.c")
    assert first == local
    assert {"a.c", "conf.h", "stdio.h"} <= contents_sent(jobs.sent[-1])
    # Another source with the same headers: only its own content travels.
    second, local = remote(jobs, project, "b.c")
    assert second == local and contents_sent(jobs.sent[-1]) == {"b.c"}
    # The header changes (same size, so only its stamp tells): the next job carries it anew.
    (project / "conf.h").write_text("#define VALUE 7\n")
    third, local = remote(jobs, project, "a.c")
    assert third == local and third != first
    assert contents_sent(jobs.sent[-1]) == {"conf.h"}


def test_a_helper_that_lost_its_contents_gets_them_again(farm, project):
    helper, jobs = farm
    remote(jobs, project, "a.c")
    # The helper restarted (an empty store, no job roots): the initiator still thinks it has them.
    helper.service.store = InputStore(helper.service.store.directory + "-new")
    helper.service.roots = RootPool(helper.service.roots.directory, helper.service.user)
    again, local = remote(jobs, project, "a.c")
    assert again == local
    assert len(jobs.sent) == 2 and {"a.c", "conf.h"} <= contents_sent(jobs.sent[-1])


def test_a_content_that_does_not_hash_to_its_claim_is_refused_and_not_stored(farm, project):
    helper, _ = farm
    real = b"int f(void) { return 1; }\n"
    claimed = hashlib.sha256(b"int f(void) { return 2; }\n").hexdigest()
    request = pb.CompileRequest(grant="g1", epoch=5, compiler="gcc", compiler_identity=compiler_identity("gcc"),
                                args=["-O2"], source="x.c", cwd=str(project),
                                inputs=[pb.InputFile(path=str(project / "x.c"), sha256=claimed, size=len(real),
                                                     content=real)])
    with grpc.insecure_channel(helper.address("127.0.0.1")) as channel:
        reply = compile_pb2_grpc.HelperStub(channel).Compile(request, timeout=60)
        assert "does not hash" in reply.refused and not reply.object
        assert helper.service.store.path(claimed) is None
        # Naming a content by a hash it was never sent gets "missing", not a compile.
        request.inputs[0].ClearField("content")
        assert list(compile_pb2_grpc.HelperStub(channel).Compile(request, timeout=60).missing) == [claimed]


def test_the_store_stays_within_its_bound_dropping_the_least_recently_used(tmp_path):
    store = InputStore(str(tmp_path / "store"), max_bytes=100)
    contents = [bytes([65 + i]) * 40 for i in range(5)]
    digests = [hashlib.sha256(c).hexdigest() for c in contents]
    for i, (digest, content) in enumerate(zip(digests, contents)):
        store.put(digest, content)
        if i == 1:
            assert store.path(digests[0])   # used again: the second one is now the oldest
    assert store.bytes <= 100 and len(store) == 2
    assert sorted(os.listdir(store.directory)) == sorted(digests[3:])
    assert store.path(digests[1]) is None and store.path(digests[4]) is not None
    with pytest.raises(ContentMismatch):
        store.put(digests[0], b"something else")
    with pytest.raises(ContentMismatch):
        store.put("../../etc/passwd", b"")


def test_a_reused_job_root_holds_only_the_files_of_its_current_job(tmp_path):
    store = InputStore(str(tmp_path / "store"))
    roots = RootPool(str(tmp_path), keep=1)

    def job(files):
        for content in files.values():
            store.put(hashlib.sha256(content).hexdigest(), content)
        return CompileJob(args=("-O2",), source=next(iter(files)), cwd="/w", files={}, system_dirs=(),
                          inputs={p: hashlib.sha256(c).hexdigest() for p, c in files.items()})

    first = run_compile("gcc", job({"/w/a.c": b'#include "x.h"\nint a = X;\n', "/w/x.h": b"#define X 1\n"}),
                        store=store, roots=roots)
    assert first.exit_code == 0
    # The next job in the same root: x.h was the last job's, and is not this one's.
    probe = b'#if __has_include("x.h")\n#error a file of the last job\n#endif\nint b;\n'
    second = run_compile("gcc", job({"/w/b.c": probe}), store=store, roots=roots)
    assert second.exit_code == 0, second.diagnostics
    # And a header changed under the same path is the new content.
    third = run_compile("gcc", job({"/w/a.c": b'#include "x.h"\nint a = X;\n', "/w/x.h": b"#define X 2\n"}),
                        store=store, roots=roots)
    assert third.exit_code == 0 and third.object != first.object
    assert len(os.listdir(tmp_path)) == 2   # the store and the one root, reused


def test_a_job_whose_content_was_evicted_is_missing_not_compiled(tmp_path):
    store = InputStore(str(tmp_path / "store"))
    digest = hashlib.sha256(b"int x;\n").hexdigest()
    job = CompileJob(args=(), source="a.c", cwd="/w", files={}, system_dirs=(), inputs={"/w/a.c": digest})
    with pytest.raises(InputsMissing) as missing:
        run_compile("gcc", job, workdir=str(tmp_path), store=store)
    assert missing.value.digests == [digest]


def test_a_file_is_read_once_while_its_stamp_stays_and_again_when_it_changes(tmp_path):
    path = tmp_path / "h.h"
    path.write_bytes(b"one\n")
    now = [os.stat(path).st_mtime_ns + 10**10]   # long settled
    digests = Digests(clock_ns=lambda: now[0])
    first = digests.input(str(path), lambda d: True)
    assert first.content == b"one\n"
    assert not digests.input(str(path), lambda d: False).content   # by hash only, from the cache
    path.write_bytes(b"two\n")
    changed = digests.input(str(path), lambda d: d != first.sha256)
    assert changed.content == b"two\n" and changed.sha256 == hashlib.sha256(b"two\n").hexdigest()
