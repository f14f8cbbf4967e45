"""The compiler's identity kept across builds (cli/identity_cache.py): the same identity as
agent.compile_job.compiler_identity, hashed once while the compiler's files are unchanged,
hashed again when one changes, and never taken from a corrupt entry."""
from __future__ import annotations

import shutil
import time

import agent.compile_job as compile_job
import cli.identity_cache as identity_cache
from agent.compile_job import compiler_identity as uncached
from cli.identity_cache import compiler_identity


def fake_compiler(tmp_path, body: str = "echo fake") -> str:
    """A driver that is a copy of a script (no cc1: compiler_programs asks it for programs)."""
    path = tmp_path / "bin" / "fakecc"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def later() -> int:
    """A clock past the settle time of files written just now (their ctime cannot be set back)."""
    return time.time_ns() + 10 * identity_cache.SETTLE_NS


def counting(monkeypatch) -> list:
    calls = []
    real = identity_cache.identity_of

    def identity_of(files):
        calls.append(1)
        return real(files)

    monkeypatch.setattr(identity_cache, "identity_of", identity_of)
    return calls


def test_the_same_identity_as_the_agents_hashed_once_for_unchanged_files(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    gcc = shutil.which("gcc")
    cache = str(tmp_path / "cache")
    assert compiler_identity(gcc, cache) == uncached(gcc)
    assert compiler_identity(gcc, cache) == uncached(gcc)
    assert len(calls) == 1


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    cc = fake_compiler(tmp_path)
    cache = str(tmp_path / "cache")
    first = compiler_identity(cc, cache, later)
    assert first == compiler_identity(cc, cache, later) == uncached(cc)
    assert len(calls) == 1
    fake_compiler(tmp_path, "echo other")
    second = compiler_identity(cc, cache, later)
    assert second == uncached(cc) != first
    assert len(calls) == 2


def test_a_file_changed_just_now_is_not_kept(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    cc = fake_compiler(tmp_path)   # written just now: a second change in the same tick would not show
    cache = str(tmp_path / "cache")
    compiler_identity(cc, cache)
    compiler_identity(cc, cache)
    assert len(calls) == 2


def test_a_corrupt_or_foreign_entry_is_not_used(tmp_path, monkeypatch):
    cc = fake_compiler(tmp_path)
    cache = tmp_path / "cache"
    right = compiler_identity(cc, str(cache), later)
    [entry] = cache.iterdir()
    entry.write_text('{"v": 1, "paths": [], "stamps": [], "identity": "' + "0" * 64 + '"}')
    assert compiler_identity(cc, str(cache), later) == right
    entry.write_text("{not json")
    assert compiler_identity(cc, str(cache), later) == right


def test_the_job_server_uses_it(tmp_path, monkeypatch):
    import cli.compiler_facts as compiler_facts
    import cli.job_server as job_server

    assert job_server._identity is compiler_facts.identity
    assert compiler_facts.compiler_identity is compiler_identity
    assert compile_job.compiler_identity is uncached
