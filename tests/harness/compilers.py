"""Compilers for tests: another GCC, another Clang, that a helper does not have."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BRAND = b"(Bat"   # in the copied cc1's identification string, which every object's .comment names


def other_gcc(where: Path) -> Path:
    """A GCC install tree under `where` (bin/gcc, bin/cc and lib/gcc/<target>/<version>/cc1): the
    system's driver and a cc1 whose identification string differs, so that its objects
    differ from the system gcc's in .comment. The driver finds that cc1 relative to itself,
    next to links to the rest of the system's (headers, cc1plus, collect2), and as on PATH."""
    system_cc1 = subprocess.run(["gcc", "-print-prog-name=cc1"], capture_output=True, text=True,
                                check=True).stdout.strip()
    content = Path(system_cc1).read_bytes()
    brand = next((b for b in (b"(Debian ", b"(GCC) ", b"(Ubuntu ") if content.count(b) == 1), None)
    if brand is None:
        raise RuntimeError("the system's cc1 has no identification string to change")
    target = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
    version = subprocess.run(["gcc", "-dumpversion"], capture_output=True, text=True, check=True).stdout.strip()
    libexec = where / "lib" / "gcc" / target / version
    libexec.mkdir(parents=True)
    (where / "bin").mkdir()
    driver = where / "bin" / "gcc"
    shutil.copy2(os.path.realpath(shutil.which("gcc")), driver)
    (where / "bin" / "cc").symlink_to("gcc")   # make's $(CC)
    for entry in os.listdir(os.path.dirname(system_cc1)):   # its headers, cc1plus, collect2, ...
        if entry != "cc1":
            (libexec / entry).symlink_to(os.path.join(os.path.dirname(system_cc1), entry))
    cc1 = libexec / "cc1"
    cc1.write_bytes(content.replace(brand, (BRAND + b"!" * len(brand))[:len(brand) - 1] + b" "))
    cc1.chmod(0o755)
    return driver


def other_clang(where: Path) -> Path:
    """A Clang under `where` (bin/clang, bin/clang++) that a helper does not have: the system's
    driver with bytes appended (an ELF file's tail is never loaded: it compiles as the
    system's, with the system's libLLVM and libclang-cpp, but its identity differs), and
    lib/clang linked to the system's resource directories, which it finds relative to itself."""
    system = Path(os.path.realpath(shutil.which("clang")))
    (where / "bin").mkdir(parents=True)
    driver = where / "bin" / "clang"
    driver.write_bytes(system.read_bytes() + b"\0baton test clang\0")
    driver.chmod(0o755)
    (where / "bin" / "clang++").symlink_to("clang")
    resource = subprocess.run(["clang", "-print-resource-dir"], capture_output=True, text=True,
                              check=True).stdout.strip()
    (where / "lib").mkdir()
    (where / "lib" / "clang").symlink_to(os.path.dirname(os.path.realpath(resource)))
    return driver
