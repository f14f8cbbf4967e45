"""The native `baton cc` (baton_cc.c beside this file): built once, at `baton run` start.

`baton cc` runs once per compile; as Python its start-up (~25 ms of CPU)
costs more than a small compile. `build(wrappers)` compiles baton_cc.c with
the system C compiler (the real one on PATH, never a wrapper) into
`<wrappers>/.native/baton-cc-<key>`, the key a hash of the source, the flags
and the machine (a home directory shared between machines of two kinds gets
one binary each), through a temporary name and a rename, so concurrent runs
never see half a binary; a binary already there is used as it is (~0 ms; the
build itself takes ~100-200 ms, once). It is tried before it is used (its
`--plan` on a plain compile). No C compiler, a failed build or a binary that
does not answer right: None and why, and `baton run` keeps the Python wrapper.
Old binaries are left in place: a tree configured under an older Baton may
still run them (CMake records the wrapper path, whose symlink names one).
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess

from cli.cc import real_compiler

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baton_cc.c")
FLAGS = ("-O2", "-std=c99")
BUILD_TIMEOUT = 120.0   # s: a cold compiler on a loaded machine
C_COMPILERS = ("cc", "gcc", "clang")
# `--plan` of a plain compile: the answer a working binary gives (cli.cc_args.plan).
PROBE = (["cc", "-c", "a.c"], b"remote\0a.c\0a.o\0")


def binary_path(wrappers: str, source: bytes) -> str:
    key = hashlib.sha256(b"\0".join([source, *(f.encode() for f in FLAGS), platform.machine().encode(),
                                     platform.system().encode()])).hexdigest()[:16]
    return os.path.join(wrappers, ".native", f"baton-cc-{key}")


def find_c_compiler(path: str | None = None) -> str | None:
    for name in C_COMPILERS:
        try:
            return real_compiler(name, path)
        except FileNotFoundError:
            continue
    return None


def build(wrappers: str, path: str | None = None) -> tuple[str | None, str]:
    """(the native wrapper, "") or (None, why not). `path`: where to look for a C compiler
    (default $PATH, skipping the wrapper directory)."""
    try:
        with open(SOURCE, "rb") as f:
            source = f.read()
    except OSError as exc:
        return None, f"cannot read {SOURCE}: {exc}"
    binary = binary_path(wrappers, source)
    if os.path.isfile(binary) and os.access(binary, os.X_OK):
        return binary, ""
    compiler = find_c_compiler(path)
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) on PATH"
    tmp = f"{binary}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(binary), exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "BATON_RUN_DIR"}
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", tmp, SOURCE], env=env, capture_output=True,
                                  timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, f"{compiler} took over {BUILD_TIMEOUT:g} s"
        if done.returncode != 0:
            last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            return None, f"{compiler} failed (exit {done.returncode}): {last[-200:]}"
        try:
            probe = subprocess.run([tmp, "--plan", *PROBE[0]], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return None, "the built wrapper did not answer"
        if probe.returncode != 0 or probe.stdout != PROBE[1]:
            return None, f"the built wrapper answered {probe.stdout[:100]!r} (exit {probe.returncode})"
        os.replace(tmp, binary)
        return binary, ""
    except OSError as exc:
        return None, f"cannot build it: {exc}"
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass
