"""c-ares, a real and unmodified open-source C project (CMake, ~90 C files), for
the distributed-compiling test (tests/e2e/test_cares.py) and bench/compile.py.

Its sources ship in the PyPI sdist of pycares (deps/c-ares). Tests never
download: CI fetches the sdist first (`python3 -m tests.harness.cares fetch`,
in .ci/run) into the cache directory, $BATON_TEST_SDISTS or
~/.cache/baton-tests, where `sdist()` finds it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

PYCARES = "5.2.1"          # ships c-ares 1.34.9
SDISTS_ENV = "BATON_TEST_SDISTS"
ARCHIVE = f"pycares-{PYCARES}.tar.gz"
# RelWithDebInfo: -O2 -g, so debug info is compared too; the static library alone,
# without c-ares' tools (links are local anyway).
CMAKE_OPTIONS = ("-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DCARES_STATIC=ON", "-DCARES_SHARED=OFF",
                 "-DCARES_BUILD_TOOLS=OFF", "-DCARES_BUILD_TESTS=OFF")


def sdist_dir() -> Path:
    explicit = os.environ.get(SDISTS_ENV)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "baton-tests"


def sdist() -> Path | None:
    """The pycares sdist if it was fetched, else None."""
    path = sdist_dir() / ARCHIVE
    return path if path.is_file() else None


def fetch(directory: Path | None = None) -> Path:
    """Download the sdist with pip (source only, no dependencies) unless it is there."""
    directory = directory or sdist_dir()
    if not (directory / ARCHIVE).is_file():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--no-binary", ":all:", f"pycares=={PYCARES}", "-d", str(directory)], check=True)
    return directory / ARCHIVE


def unpack(archive: Path, into: Path) -> Path:
    """The c-ares source tree of the sdist, unpacked under `into`."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/deps/c-ares/" in m.name + "/"]
        tar.extractall(into, members=members, filter="data")
    return into / f"pycares-{PYCARES}" / "deps" / "c-ares"


def configure(source: Path, build: Path, env: dict, runner: tuple[str, ...] = (),
              options: tuple[str, ...] = ()) -> None:
    """`cmake -S source -B build` with CMAKE_OPTIONS (and `options`), run by `runner` (e.g. baton run)."""
    done = subprocess.run([*runner, "cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS, *options],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"cmake configure failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        print("usage: python3 -m tests.harness.cares fetch", file=sys.stderr)
        raise SystemExit(2)
    print(fetch())
