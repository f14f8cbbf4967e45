"""`baton run` byte-compiles the Baton modules it loaded when Python does not
(PYTHONDONTWRITEBYTECODE): otherwise each `baton run` compiled them from source again,
~50-70 ms of CPU a build on the cores the build's compiles share (bench/run_cpu.py)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import cli.run as run


def test_the_modules_loaded_are_compiled_when_python_writes_no_bytecode(tmp_path, monkeypatch):
    package = tmp_path / "batonpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(run, "ROOT", str(tmp_path))
    for name in ("batonpkg", "batonpkg.mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.import_module("batonpkg.mod")
    cached = importlib.util.cache_from_source(str(package / "mod.py"))
    assert not os.path.exists(cached)
    run.precompile_loaded()
    assert os.path.exists(cached)
    assert os.path.exists(importlib.util.cache_from_source(str(package / "__init__.py")))
