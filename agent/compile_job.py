"""A helper's half of a distributed compile: the initiator's files in, an object out.

The initiator sends the compile's own command line, its working directory
and every file the compile reads (the source and each header, system headers
included, by absolute path); the helper lays those files out under a fresh
job root at the same paths, runs the same compiler there with the same
flags, and returns the object, the diagnostics, the exit code and, with the
job's dependency flags, the .d file the compile wrote (agent/depfile.py
names it at the initiator's paths) (a helper
reuses job roots, agent/job_root.py, and links the files from its store of
contents by hash, agent/input_store.py). Because the
compiler sees the same file contents at the same paths (only under a
prefix that `-ffile-prefix-map` removes and that GCC does not record in the
debug info's producer string), the object is byte-identical to a local one,
`-g` included, and diagnostics are the local ones once the prefix is taken
out. (Full preprocessing was tried first: macro expansion moves columns, so
debug line tables differ; `-fdirectives-only` is recorded in the producer.)

A compiler is identified by the hash of its files (the driver, cc1 or
cc1plus, and as), so a helper never compiles with a different compiler that
merely has the same name (`compiler_identity`).

Nothing of the job is trusted: flags are checked again here (only those of
`ALLOWED`), every path is mapped into the job root (a relative one, `-I../include`,
stays as spelt: the compiler resolves it from the working directory there) and a
path that leaves it is refused, the compiler's own include directories are replaced by the
shipped copies (`-nostdinc`), sizes and time are bounded, the environment is
clean, and the caller runs it as an unprivileged user when it can.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import select
import shutil
import subprocess
import tempfile
from typing import Callable, Iterable, Mapping, Sequence

from agent.depfile import relocated
from agent.job_root import InputsMissing, JobRefused, JobRoot, RootPool, inside  # noqa: F401 (raised here too)
from agent.job_root import from_cwd

MAX_INPUT_BYTES = 64 * 1024 * 1024      # all files of one job; larger ones compile on the initiator
MAX_OBJECT_BYTES = 256 * 1024 * 1024
MAX_DIAGNOSTICS = 1024 * 1024
MAX_ARGS = 4096
MAX_DEPFILE_BYTES = 8 * 1024 * 1024
MAX_DEP_VALUE = 4096
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
# The initiator's locale variables a job carries: the compiler's messages and quotes follow
# them ('x' in the C locale, ‘x’ in a UTF-8 one), so diagnostics are the local ones.
LOCALE_VARS = ("LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LANG", "LANGUAGE")
_LOCALE_VALUE = re.compile(r"^[A-Za-z0-9_.@:+-]{0,64}$")
# GCC includes glibc's stdc-predef.h before the source unasked (from its system directories),
# but not under -nostdinc, which a helper compiles with: the helper names it (_preinclude).
PREINCLUDE = "stdc-predef.h"

# Flags a helper compiles with. Path-valued ones are mapped into the job root.
PATH_VALUED = ("-I", "-isystem", "-idirafter", "-iquote", "-include", "-imacros")
PLAIN_PREFIXES = ("-D", "-U", "-O", "-g", "-f", "-m", "-W", "-std=", "-ansi", "-pedantic", "-w", "-pipe",
                  "-pthread", "-nostdinc", "-undef", "-trigraphs")
REFUSED_PREFIXES = ("-fplugin", "-fprofile", "-fauto-profile", "-fdump", "-fsave-optimization-record",
                    "-fopt-info", "-fstack-usage", "-fcallgraph-info", "-ftest-coverage", "-fcoverage",
                    "-fdebug-prefix-map", "-ffile-prefix-map", "-fmacro-prefix-map", "-flto", "-Wa,", "-Wl,",
                    "-Wp,", "-march=native", "-mtune=native", "-mcpu=native", "-fsanitize-blacklist",
                    "-fsanitize-ignorelist", "-fdiagnostics-format=sarif", "-fbranch-probabilities",
                    "-fcreate-profile", "-save-temps", "-specs", "-wrapper", "-B", "-dump", "-print")


@dataclasses.dataclass(frozen=True)
class CompileJob:
    """What the initiator sends: the compile as it would run there."""

    args: tuple[str, ...]          # the flags, without -c, -o and the source
    source: str                    # the source path as the command names it
    cwd: str                       # the initiator's working directory (absolute)
    files: Mapping[str, bytes]     # absolute path -> content, every file the compile reads
    system_dirs: tuple[str, ...]   # the compiler's own include directories, in search order
    inputs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # more files: path -> sha256
    #                                (their contents are in the helper's agent.input_store.InputStore)
    dep_flags: tuple[str, ...] = ()  # -MD/-MMD, -MP, -MT/-MQ/-MF and values (cli.cc_args.RemotePlan.dep_flags)


@dataclasses.dataclass(frozen=True)
class JobResult:
    exit_code: int
    object: bytes          # empty when the compile failed
    diagnostics: bytes     # the compiler's stderr, with the initiator's paths
    depfile: bytes | None = None   # the .d as a local compile writes it (dep_flags given, compiled)


def compiler_programs(compiler: str) -> list[tuple[str, str]]:
    """(role, real path) of the files that make up a GCC or Clang compiler: ("driver", its
    driver), then each of cc1, cc1plus and as that the driver runs (those it finds). A
    driver without cc1 (Clang) compiles in itself and its libraries: then also
    ("lib/<soname>", path) of each libLLVM / libclang-cpp it loads (Debian's clang is a 140 kB
    driver, the compiler is in those) and ("resource/share/<name>", path) of each file of
    its resource directory's share/ (the sanitizers' default ignore lists, which change
    what -fsanitize compiles to)."""
    driver = shutil.which(compiler)
    if driver is None:
        raise FileNotFoundError(f"no compiler {compiler!r} on PATH")
    files = [("driver", os.path.realpath(driver))]
    for prog in ("cc1", "cc1plus", "as"):
        found = _ask(driver, f"-print-prog-name={prog}")
        path = shutil.which(found) if found and not os.path.isabs(found) else found
        if path and os.path.isfile(path):
            files.append((prog, os.path.realpath(path)))
    if not any(role == "cc1" for role, _ in files):
        files += _clang_files(files[0][1])
    return files


_COMPILER_LIBRARY = re.compile(r"^\s*(lib(?:LLVM|clang-cpp)[-.][A-Za-z0-9._+-]*)\s+=>\s+(/\S+)\s")


def _ask(driver: str, flag: str) -> str:
    try:
        return subprocess.run([driver, flag], capture_output=True, text=True, timeout=10, env=CLEAN_ENV).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _clang_files(driver: str) -> list[tuple[str, str]]:
    """The libraries holding Clang's compiler and its resource share/ files (compiler_programs)."""
    files = []
    try:
        done = subprocess.run(["ldd", driver], capture_output=True, text=True, timeout=30, env=CLEAN_ENV)
        listing = done.stdout if done.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        listing = ""
    for line in listing.splitlines():
        match = _COMPILER_LIBRARY.match(line + " ")
        if match:
            files.append((f"lib/{match.group(1)}", os.path.realpath(match.group(2))))
    resource = _ask(driver, "-print-resource-dir")
    share = os.path.join(os.path.realpath(resource), "share") if os.path.isabs(resource) else ""
    if share and os.path.isdir(share):
        files += [(f"resource/share/{name}", os.path.join(share, name)) for name in sorted(os.listdir(share))
                  if re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$", name) and os.path.isfile(os.path.join(share, name))]
    return sorted(files, key=lambda f: (not f[0].startswith("lib/"), f[0]))


def compiler_files(compiler: str) -> list[str]:
    """The files that make up a GCC or Clang compiler: its driver and the programs it runs."""
    return [path for _, path in compiler_programs(compiler)]


def identity_of(files: Iterable[tuple[str, str]]) -> str:
    """sha256 over (name, file) pairs in order: each name, the file's size and its content
    (the size keeps file boundaries fixed: no other split of the same bytes hashes alike).
    A shipped toolchain is checked with it too (agent/toolchain_store.py)."""
    digest = hashlib.sha256()
    for name, path in files:
        with open(path, "rb") as f:
            digest.update(f"{name}\0{os.fstat(f.fileno()).st_size}\0".encode())
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def compiler_identity(compiler: str) -> str:
    """sha256 over the compiler's files (names, sizes and contents, in order)."""
    return identity_of((os.path.basename(path), path) for path in compiler_files(compiler))


def _relative_ok(job: CompileJob, path: str, where: JobRoot | None) -> None:
    """A relative path stays as spelt (-g records `../include` so); JobRefused when a '..'
    climbs above the root (agent.job_root.from_cwd). With `where`, the directories its '..'
    parts climb out of are made (JobRoot.spelt): `sub/../include` needs sub/ as it is here."""
    if os.path.isabs(path) or ".." not in path.split("/"):
        return
    spelt = from_cwd(job.cwd, path)
    if where is not None:
        where.spelt(spelt)


def flag_paths(args: Sequence[str]) -> list[str]:
    """The path values of `args`' PATH_VALUED flags, as map_args reads them."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("-D", "-U", "--param") or arg in PATH_VALUED:
            if arg in PATH_VALUED and i + 1 < len(args):
                out.append(args[i + 1])
            i += 2
            continue
        flag = next((p for p in PATH_VALUED if arg.startswith(p)), None)
        if flag is not None:
            out.append(arg[len(flag):])
        i += 1
    return out


def map_args(job: CompileJob, root: str, where: JobRoot | None = None) -> list[str]:
    """The job's flags with every path inside `root` (`where`: its JobRoot, to make the
    directories relative paths climb out of); JobRefused for anything else."""
    if len(job.args) > MAX_ARGS:
        raise JobRefused("too many arguments")
    out: list[str] = []
    args = list(job.args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(REFUSED_PREFIXES):
            raise JobRefused(f"a helper does not compile with {arg[:80]!r}")
        if arg in ("-D", "-U", "--param"):
            if i + 1 >= len(args):
                raise JobRefused(f"{arg} without a value")
            out += [arg, args[i + 1]]
            i += 2
            continue
        if arg in PATH_VALUED:
            if i + 1 >= len(args):
                raise JobRefused(f"{arg} without a value")
            flag, value = arg, args[i + 1]
            i += 1
        else:
            flag = next((p for p in PATH_VALUED if arg.startswith(p)), None)
            value = arg[len(flag):] if flag else None
        if flag is not None:
            _relative_ok(job, value, where)
            out.append(flag + (inside(root, value) if os.path.isabs(value) else value))
        elif arg.startswith(PLAIN_PREFIXES):
            out.append(arg)
        else:
            raise JobRefused(f"a helper does not compile with {arg[:80]!r}")
        i += 1
    return out


def _preinclude(command: Sequence[str], job: CompileJob) -> list[str]:
    """["-include", PREINCLUDE] when the local compile includes it unasked: the compiler does
    (Clang 14 does not), the job ships it in a system directory (cli/compile_scan.py), and the
    job's flags do not turn it off. -include searches the working directory and -iquote ones
    too, not only the chain GCC's own search takes: a file of that name there is the difference."""
    if any(arg in ("-nostdinc", "-ffreestanding", "-fno-hosted") for arg in job.args):
        return []
    shipped = job.files.keys() | job.inputs.keys()
    if not any(os.path.normpath(os.path.join(d, PREINCLUDE)) in shipped for d in job.system_dirs):
        return []
    return ["-include", PREINCLUDE] if _includes_unasked(tuple(command)) else []


@functools.lru_cache(maxsize=8)
def _includes_unasked(command: tuple[str, ...]) -> bool:
    """Whether the compiler includes PREINCLUDE unasked: the dependencies of an empty C file
    name it (asked once per compiler, ~10 ms)."""
    try:
        done = subprocess.run([*command, "-x", "c", "-E", "-M", os.devnull], capture_output=True, timeout=30,
                              env=CLEAN_ENV, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and f"/{PREINCLUDE}".encode() in done.stdout


def map_dep_flags(dep_flags: Sequence[str], depfile: str) -> tuple[list[str], int]:
    """The job's dependency flags as the helper compiles with them, writing `depfile` (its own
    file: the job's -MF names the initiator's), and how many targets they name; JobRefused for
    any other -M flag. GCC refuses -MP, -MT, -MF without -MD/-MMD itself ("you must specify
    either -M or -MM"): so does the helper, and the initiator's own compile says so. A target
    is needed: the default one would be the helper's object. A -MT target holds no white
    space: it is written unquoted, and agent/depfile.py reads the rule back by its names."""
    if not dep_flags:
        return [], 0
    if len(dep_flags) > MAX_ARGS:
        raise JobRefused("too many dependency flags")
    out: list[str] = []
    targets, i = 0, 0
    while i < len(dep_flags):
        arg = dep_flags[i]
        i += 1
        if arg in ("-MD", "-MMD", "-MP"):
            out.append(arg)
            continue
        flag = arg[:3]
        if flag not in ("-MF", "-MT", "-MQ"):
            raise JobRefused(f"a helper does not write dependencies with {arg[:80]!r}")
        if arg == flag:
            if i >= len(dep_flags):
                raise JobRefused(f"{arg} without a value")
            value, i = dep_flags[i], i + 1
        else:
            value = arg[3:]
        if not 0 < len(value) <= MAX_DEP_VALUE or "\0" in value:
            raise JobRefused(f"{flag} with a value of {len(value)} characters or a NUL")
        if flag != "-MF":
            if not value.isprintable() or (flag == "-MT" and any(c.isspace() for c in value)):
                raise JobRefused(f"{flag} {value[:80]!r}: a target of control characters or spaces")
            out += [flag, value]   # never joined: a value starting with '-' stays a value
            targets += 1
    if not any(arg in ("-MD", "-MMD") for arg in out):
        raise JobRefused("dependency flags without -MD or -MMD")
    if not targets:
        raise JobRefused("a dependency file without -MT or -MQ would name the helper's object")
    return [*out, "-MF", depfile], targets


def _read_depfile(path: str, root: str, targets: int) -> bytes | None:
    """The .d the compiler wrote at `path`, at the initiator's paths (agent/depfile.py), or None.
    Not through a link: out/ is the compile user's. It goes with out/'s other files after the
    job (RootPool.give, or the temporary job directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > MAX_DEPFILE_BYTES:
            raise JobRefused(f"the dependency file is {size} bytes, over {MAX_DEPFILE_BYTES}")
        return relocated(f.read(MAX_DEPFILE_BYTES + 1), root, targets)


@functools.lru_cache(maxsize=8)
def _as_user(user: str | int) -> tuple[str, ...]:
    """The setpriv(1) command that runs argv as `user` (uid, primary gid, no other groups,
    no new privileges: a setuid program the compiler runs gains nothing), or () when there
    is no setpriv (then Popen's own `user=`). Not Popen's `user=`, `group=`, `extra_groups=`:
    with those it cannot vfork, and a fork of the agent (many MB, busy gRPC threads) costs
    ~3.5 ms of CPU on each side (bench/README.md, "A helper's CPU per job") and runs gRPC's
    fork handlers in the child, which abort it (ev_epoll1 "Check failed"). Not a thread of
    the agent switching its own ids around a vfork either: while it is the compile user,
    any process of that user may signal it, and a SIGSTOP or SIGKILL stops the agent.
    Cached: the user database is read once per user, not once per job."""
    setpriv = shutil.which("setpriv", path=CLEAN_ENV["PATH"])
    if setpriv is None:
        return ()
    import grp
    import pwd

    entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    group = grp.getgrgid(entry.pw_gid).gr_gid
    return (setpriv, f"--reuid={entry.pw_uid}", f"--regid={group}", "--clear-groups", "--no-new-privs", "--")


def compile_env(locale: Mapping[str, str] | None) -> dict[str, str]:
    """The compiler's environment: CLEAN_ENV, or its PATH and the initiator's `locale`."""
    if not locale:
        return CLEAN_ENV
    for name, value in locale.items():
        if name not in LOCALE_VARS or not _LOCALE_VALUE.match(value):
            raise JobRefused(f"{name[:40]}={value[:40]!r} is not a locale setting")
    return {"PATH": CLEAN_ENV["PATH"], **locale}


def _input_bytes(job: CompileJob, store) -> int:
    total = sum(len(v) for v in job.files.values())
    if job.inputs:
        if store is None:
            raise JobRefused("this helper keeps no inputs by hash")
        total += store.total_size(job.inputs.values())
    return total


def run_compile(compiler: str | Sequence[str], job: CompileJob, workdir: str | None = None, timeout: float = 600.0,
                preexec: Callable[[], None] | None = None, user: str | int | None = None,
                store=None, roots: RootPool | None = None,
                locale: Mapping[str, str] | None = None) -> JobResult:
    """Compile `job` with `compiler` in a job root (one of `roots`, else a fresh one under
    `workdir`); JobRefused for what a helper does not take, InputsMissing when `store`
    (an agent.input_store.InputStore) lacks some of `job.inputs`. `compiler`: its path, or
    the command that runs it (a shipped toolchain: agent.toolchain_store.Shipped.command).
    `user`: run the compiler as this (unprivileged) user; `locale`: the initiator's locale
    variables (LOCALE_VARS)."""
    if not os.path.isabs(job.cwd):
        raise JobRefused("the working directory must be absolute")
    env = compile_env(locale)
    if _input_bytes(job, store) > MAX_INPUT_BYTES:
        raise JobRefused(f"the job's files exceed {MAX_INPUT_BYTES} bytes")
    _relative_ok(job, job.source, None)
    if roots is None:
        with tempfile.TemporaryDirectory(prefix="baton-job-", dir=workdir) as tmp:
            return _compile_in(JobRoot(tmp, user), compiler, job, store, timeout, preexec, user, env)
    root = roots.take()
    try:
        result = _compile_in(root, compiler, job, store, timeout, preexec, user, env)
    except InputsMissing:
        roots.give(root)   # its files are as the dict says: only links were left undone
        raise
    except BaseException:
        roots.discard(root)
        raise
    roots.give(root)
    return result


def _compile_in(where: JobRoot, compiler: str | Sequence[str], job: CompileJob, store, timeout: float,
                preexec: Callable[[], None] | None, user: str | int | None, env: Mapping[str, str]) -> JobResult:
    where.lay_out(job.files, job.inputs, store)
    root = where.root
    cwd = inside(root, job.cwd)
    os.makedirs(cwd, exist_ok=True)
    _relative_ok(job, job.source, where)
    source = inside(root, job.source) if os.path.isabs(job.source) else job.source
    obj, depfile = os.path.join(where.out, "job.o"), os.path.join(where.out, "job.d")
    deps, targets = map_dep_flags(job.dep_flags, depfile)
    command = [compiler] if isinstance(compiler, str) else list(compiler)
    argv = [*command, "-nostdinc", *[f"-isystem{where.spelt(d)}" for d in job.system_dirs],
            f"-ffile-prefix-map={root}=", *_preinclude(command, job), *map_args(job, root, where), *deps,
            "-c", source, "-o", obj]
    switch = _as_user(user) if preexec is None and user is not None else ()
    if switch:
        argv, user = [*switch, *argv], None
    code, stderr = _run(argv, cwd, env, timeout, preexec, user, where.path)
    if code is None:
        return JobResult(124, b"", b"baton: the compile timed out on the helper\n")
    diagnostics = stderr.replace(root.encode(), b"")
    if code != 0:
        return JobResult(code, b"", diagnostics)
    size = os.path.getsize(obj)
    if size > MAX_OBJECT_BYTES:
        raise JobRefused(f"the object is {size} bytes, over {MAX_OBJECT_BYTES}")
    with open(obj, "rb") as f:
        compiled = f.read()
    return JobResult(0, compiled, diagnostics, _read_depfile(depfile, root, targets) if deps else None)


def _run(argv: list[str], cwd: str, env: Mapping[str, str], timeout: float, preexec: Callable[[], None] | None,
         user: str | int | None, scratch: str) -> tuple[int | None, bytes]:
    """Run the compiler: (its exit code, or None when it ran past `timeout` and was killed;
    the first MAX_DIAGNOSTICS bytes of its stderr). In the agent's process group, as before:
    a killed agent's group takes its compilers with it (tests/e2e/test_run_remote.py). Its
    stderr goes to an unnamed file in `scratch` (the job's directory, the agent's) and the wait
    is one poll of a pidfd: no selector loop in the agent waking for each chunk of output
    (Popen.communicate), no timer thread; stdout, where a compile with -c -o writes nothing,
    is /dev/null."""
    with tempfile.TemporaryFile(dir=scratch) as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, preexec_fn=preexec, user=user)
        exited = False
        try:
            exited = _exits_within(proc, timeout)
        finally:
            if not exited:
                proc.kill()
            proc.wait()
        return (proc.returncode if exited else None), os.pread(err.fileno(), MAX_DIAGNOSTICS, 0)


def _exits_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether `proc` exits within `timeout` s (not reaped: its pid stays its own)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):   # before Linux 5.3: Popen's own wait, which polls
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(pidfd)
