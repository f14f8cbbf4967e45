"""The job server computes a compiler's identity and system directories once, not once per
job that asks at the same time: at a build's start, every job of -jN asked together and
each hashed the compiler (~60 ms of CPU) while the build waited (issue 14)."""
from __future__ import annotations

import os
import shutil
import threading

import cli.job_server as job_server
from cli.core_client import CoreSource
from cli.job_server import JobServer, Once
from tests.harness.wait import holds_for, wait_until

JOBS = 4


class LocalCores(CoreSource):
    """A CoreClient stand-in with no helper core: every job is answered "compile it locally"."""

    def acquire_core(self, wait=None):
        return None, -1, "no helper in this test"

    def release(self, grant, slot=-1):
        raise AssertionError("no grant was given")


def test_concurrent_jobs_compute_the_compilers_identity_once(tmp_path, monkeypatch):
    compiler = tmp_path / "bin" / "gcc"   # a path no other test used: not in the module's cache
    compiler.parent.mkdir()
    os.symlink(shutil.which("gcc"), compiler)
    for i in range(JOBS):
        (tmp_path / f"j{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    calls: list[str] = []
    gate = threading.Event()
    real = job_server.compiler_identity

    def identity(path: str) -> str:
        calls.append(path)
        gate.wait(60)   # held until every job has asked
        return real(path)

    monkeypatch.setattr(job_server, "compiler_identity", identity)
    server = JobServer(str(tmp_path), LocalCores(), wait=1.0).start()
    asked: list[int] = []
    answers: dict[int, dict] = {}

    def job(i: int) -> None:
        asked.append(i)
        answers[i] = server.compile({"argv": [str(compiler), "-c", f"j{i}.c", "-o", f"j{i}.o"],
                                     "cwd": str(tmp_path), "env": {"PATH": os.environ["PATH"]}})

    threads = [threading.Thread(target=job, args=(i,)) for i in range(JOBS)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(asked) == JOBS and calls, timeout=30, message="every job asked")
        # The old lru_cache let each job compute it: JOBS calls at once.
        holds_for(lambda: len(calls) == 1, 1.0, message="one computation of the identity")
    finally:
        gate.set()
        for thread in threads:
            thread.join(60)
        server.stop()
    assert answers == {i: {"local": "no helper in this test"} for i in range(JOBS)}
    assert calls == [str(compiler)]


def test_a_failure_is_not_kept_and_keys_beyond_the_size_are_dropped():
    results = iter([RuntimeError("first"), "second"])
    calls = []

    def compute(key):
        calls.append(key)
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    once = Once(compute, size=1)
    try:
        once("a")
        raise AssertionError("the failure should pass")
    except RuntimeError:
        pass
    assert once("a") == "second" and once("a") == "second" and calls == ["a", "a"]
    results = iter(["b"])
    assert once("b") == "b"
    results = iter(["a again"])
    assert once("a") == "a again" and calls == ["a", "a", "b", "a"]
