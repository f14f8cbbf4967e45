"""The job server computes a compiler's identity and system directories once, not once per
job that asks at the same time: at a build's start, every job of -jN asked together and
each hashed the compiler (~60 ms of CPU) while the build waited (issue 14). `baton run`
looks them up early for the compilers its wrappers will find (cli.compiler_facts.prefetch)."""
from __future__ import annotations

import os
import shutil
import threading

import pytest

import cli.compiler_facts as compiler_facts
from cli.compile_scan import ScanFailed
from cli.compiler_facts import Once
from cli.job_server import JobServer
from tests.harness.cores import LocalCores
from tests.harness.wait import holds_for, wait_until

JOBS = 4


def test_concurrent_jobs_compute_the_compilers_identity_once(tmp_path, monkeypatch):
    compiler = tmp_path / "bin" / "gcc"   # a path no other test used: not in the module's cache
    compiler.parent.mkdir()
    os.symlink(shutil.which("gcc"), compiler)
    for i in range(JOBS):
        (tmp_path / f"j{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
    calls: list[str] = []
    gate = threading.Event()
    real = compiler_facts.compiler_identity

    def identity(path: str) -> str:
        calls.append(path)
        gate.wait(60)   # held until every job has asked
        return real(path)

    monkeypatch.setattr(compiler_facts, "compiler_identity", identity)
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


def test_prefetch_computes_what_the_first_job_asks_for_on_the_compilers_the_wrappers_find(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"   # paths no other test used: not in the module's Once yet
    bin_dir.mkdir()
    os.symlink(shutil.which("gcc"), bin_dir / "cc")
    os.symlink(shutil.which("g++"), bin_dir / "c++")
    wrappers = tmp_path / "wrappers"   # first on PATH, as in a build: the wrappers skip it
    wrappers.mkdir()
    os.symlink(shutil.which("true"), wrappers / "cc")
    monkeypatch.setenv("BATON_WRAPPER_DIR", str(wrappers))
    path = f"{wrappers}{os.pathsep}{bin_dir}"
    calls: list[str] = []
    real = compiler_facts.compiler_identity
    monkeypatch.setattr(compiler_facts, "compiler_identity", lambda c: calls.append(c) or real(c))
    compiler_facts.prefetch(path).join(120)
    assert calls == [str(bin_dir / "cc"), str(bin_dir / "c++")]
    # What a job of the build asks: the compiler as the wrapper names it (cli.cc.real_compiler).
    from cli.cc import real_compiler

    cc = real_compiler("cc", path)
    assert compiler_facts.identity(cc) == real(cc)
    assert "/usr/include" in compiler_facts.system_dirs(cc, "c")
    assert calls == [str(bin_dir / "cc"), str(bin_dir / "c++")]   # nothing computed again


def test_a_compiler_the_prefetch_cannot_use_is_left_to_the_jobs_and_the_next_is_still_looked_up(tmp_path,
                                                                                                  monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "cc"   # lists no include directories: system_dirs fails
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    os.symlink(shutil.which("g++"), bin_dir / "c++")
    monkeypatch.setenv("BATON_WRAPPER_DIR", str(tmp_path / "wrappers"))
    listed: list[tuple] = []
    real = compiler_facts.list_system_dirs
    monkeypatch.setattr(compiler_facts, "list_system_dirs", lambda *key: listed.append(key) or real(*key))
    compiler_facts.prefetch(str(bin_dir)).join(120)
    assert listed == [(str(broken), "c"), (str(bin_dir / "c++"), "c++")]
    assert compiler_facts.system_dirs(str(bin_dir / "c++"), "c++")
    with pytest.raises(ScanFailed):   # the job asks again and fails as it would have
        compiler_facts.system_dirs(str(broken), "c")
    assert listed[2:] == [(str(broken), "c")]
