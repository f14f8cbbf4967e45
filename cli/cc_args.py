"""What a compiler command line asks for, and whether it may compile elsewhere.

`plan(argv)` reads one compiler invocation (argv[0] is the compiler) and
returns either a `RemotePlan` (one C or C++ source compiled to one object:
the initiator preprocesses it here, a helper compiles the preprocessed text)
or a `Local` with the reason it must run here as it is. Pure: it reads no
file and runs nothing, so every rule is a plain-data test.

What stays local, as distcc and icecream decide (docs/design.md section 8):
links, `-E`, `-S`, `-M`/`-MM` without a compile, `-MF`/`-MT`/`-MQ`/`-MP`
without `-MD`/`-MMD` (GCC refuses them here, where a remote compile would
succeed), several sources, input from stdin, response files (`@file`), and
every flag that makes the compiler read or write files beyond the source and
the object, run other programs, or depend on the machine it runs on (`-fplugin=`, `-B`, `-specs=`,
`-march=native`, profile and coverage files, `-save-temps`, ...). An unknown
flag starting with `-` also stays local: never worse than local means never
guessing what a flag does.

The split: the dependency-file flags run only in the initiator's scan
(`scan_argv`: the same command with `-M -H`), which writes
the `.d` file exactly as the compile would (the same target and file names)
and lists every file the compile reads; the helper gets the other flags, the
source and those files (agent/compile_job.py), and compiles them at the same
paths.

cli/native/baton_cc.c carries a copy of `plan` (the decision, source and
output): tests/test_native_cc.py checks it against this one on every rule,
generated from the tables below, so a rule changed here fails there until
the C follows.
"""
from __future__ import annotations

import os

C_SOURCES = {".c": "c"}
CXX_SOURCES = {".cc": "c++", ".cp": "c++", ".cxx": "c++", ".cpp": "c++", ".CPP": "c++", ".c++": "c++",
               ".C": "c++"}

# Flags that take their value as the next argument (or glued: -Ipath).
PREPROCESSOR_WITH_VALUE = ("-I", "-D", "-U", "-include", "-imacros", "-isystem", "-idirafter", "-iquote",
                           "-iprefix", "-iwithprefix", "-iwithprefixbefore", "-isysroot", "-imultilib")
DEPENDENCY_WITH_VALUE = ("-MF", "-MT", "-MQ")
DEPENDENCY_FLAGS = ("-MD", "-MMD", "-MP")
PREPROCESSOR_FLAGS = ("-nostdinc", "-undef", "-trigraphs")
# Code generation and diagnostics.
BOTH_PREFIXES = ("-O", "-g", "-f", "-m", "-W", "-std=", "-ansi", "-pedantic", "-w", "-pipe", "-pthread",
                 "--param")
# Never remote: they read or write other files, run other programs, or depend on this machine.
UNSAFE_PREFIXES = ("-fplugin", "-B", "-specs", "-wrapper", "-fprofile", "-fauto-profile", "-fbranch-probabilities",
                   "-ftest-coverage", "-fcoverage", "-fcreate-profile", "-fdump", "-fsave-optimization-record",
                   "-fopt-info", "-fstack-usage", "-fcallgraph-info", "-save-temps", "-Xclang", "-Xassembler",
                   "-Xpreprocessor", "-Xlinker", "-Wa,", "-Wp,", "-Wl,", "-aux-info", "-fdebug-prefix-map",
                   "-ffile-prefix-map", "-fmacro-prefix-map", "-frandom-seed", "-flto", "-fsplit-dwarf",
                   "-gsplit-dwarf", "-fmodules", "--sysroot", "-iplugindir", "-print-", "-dump", "-###", "-v",
                   "--version", "--help", "-x", "-fsanitize-blacklist", "-fsanitize-ignorelist", "-fdiagnostics-format=sarif")
NATIVE = ("-march=native", "-mtune=native", "-mcpu=native")
# plan() runs in `baton run` for every job (cli/job_server.py): one str.startswith over a
# tuple instead of a generator over ~50 prefixes per argument (~270 -> ~60 us a c-ares job).
_GLUED = PREPROCESSOR_WITH_VALUE[3:]   # glued values besides -I/-D/-U: -includefile, -isystemdir


class _Value:
    """A frozen plain-data value (dataclasses costs `baton cc` ~10 ms of imports: inspect)."""

    __slots__ = ()

    def __init__(self, **fields) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name, value) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


class Local(_Value):
    """Compile here, exactly as asked, because of `reason`."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason=reason)


class RemotePlan(_Value):
    """One source compiled to one object: a local scan, then the compile on a helper.

    compiler, source, output (the object path as the command names it, or its
    default), language ("c" or "c++"), flags (every flag but -c, -o, the source
    and the dependency flags), dep_flags (-MD/-MMD/-MF/-MT/-MQ/-MP, with the
    compile's default names spelled out; sent as they are, a helper writes the .d
    with them: CompileRequest.dep_flags, agent.compile_job.map_dep_flags)."""

    __slots__ = ("compiler", "source", "output", "language", "flags", "dep_flags")

    def scan_argv(self) -> list[str]:
        """Dependencies only (`-M`/`-MM`: the preprocessor writes no text, ~15 % cheaper than
        `-E` to nowhere): writes the .d file as the compile's `-MD`/`-MMD` would (the same
        target and file names), and -H lists every header read (stderr). Without a
        dependency file the dependencies go to nowhere."""
        mode = {"-MD": "-M", "-MMD": "-MM"}
        if not any(d in mode for d in self.dep_flags):
            return [self.compiler, *self.flags, "-M", "-MF", os.devnull, "-H", self.source]
        return [self.compiler, *self.flags, *[mode.get(d, d) for d in self.dep_flags], "-H", self.source]


def _language(path: str) -> str | None:
    suffix = os.path.splitext(path)[1]
    return C_SOURCES.get(suffix) or CXX_SOURCES.get(suffix)


def _default_depfile(output: str) -> str:
    root, _ = os.path.splitext(output)
    return root + ".d"


def plan(argv: list[str]) -> RemotePlan | Local:
    """Remote or local, from the command line alone (see the module docstring)."""
    if len(argv) < 2:
        return Local("no arguments")
    compiler, args = argv[0], argv[1:]
    sources: list[str] = []
    output: str | None = None
    compile_only = False
    flags: list[str] = []
    deps: list[str] = []
    dep_target = dep_file = False
    dep_mode = None     # -MD or -MMD: a dependency file as a side effect of the compile
    lone = None         # the first other dependency flag (-MF, -MT, -MQ, -MP)
    i = 0
    while i < len(args):
        arg = args[i]
        value_next = i + 1 < len(args)
        if arg == "-c":
            compile_only = True
        elif arg == "-o":
            if not value_next:
                return Local("-o without a file")
            output = args[i + 1]
            i += 1
        elif arg.startswith("-o"):
            output = arg[2:]
        elif arg in ("-E", "-S", "-M", "-MM", "-MG"):
            return Local(f"{arg} asks for no object")
        elif arg.startswith("@"):
            return Local("a response file (@file)")
        elif arg == "-":
            return Local("the source comes from stdin")
        elif arg in NATIVE:
            return Local(f"{arg} depends on this machine's processor")
        elif arg.startswith(UNSAFE_PREFIXES):
            return Local(f"{arg.split('=')[0]} reads or writes other files or runs other programs")
        elif arg in DEPENDENCY_FLAGS:
            if arg == "-MP":
                lone = lone or arg
            else:
                dep_mode = dep_mode or arg
            deps.append(arg)
        elif arg in DEPENDENCY_WITH_VALUE or (arg.startswith(DEPENDENCY_WITH_VALUE) and any(
                arg.startswith(p) and len(arg) > len(p) for p in DEPENDENCY_WITH_VALUE)):
            name = arg[:3]
            if arg == name:
                if not value_next:
                    return Local(f"{arg} without a value")
                deps += [arg, args[i + 1]]
                i += 1
            else:
                deps.append(arg)
            dep_target = dep_target or name in ("-MT", "-MQ")
            dep_file = dep_file or name == "-MF"
            lone = lone or name
        elif arg in PREPROCESSOR_WITH_VALUE:
            if not value_next:
                return Local(f"{arg} without a value")
            flags += [arg, args[i + 1]]
            i += 1
        elif arg.startswith(("-I", "-D", "-U")) or (arg.startswith(_GLUED) and any(
                arg.startswith(p) and len(arg) > len(p) for p in _GLUED)):
            flags.append(arg)
        elif arg in PREPROCESSOR_FLAGS:
            flags.append(arg)
        elif arg == "--param":
            if not value_next:
                return Local("--param without a value")
            flags += [arg, args[i + 1]]
            i += 1
        elif arg.startswith(BOTH_PREFIXES):
            flags.append(arg)
        elif arg.startswith("-"):
            return Local(f"{arg} is a flag Baton does not know")
        else:
            if _language(arg) is None:
                return Local(f"{arg} is not a C or C++ source (a link, or another language)")
            sources.append(arg)
        i += 1
    if not compile_only:
        return Local("no -c: a link")
    if len(sources) != 1:
        return Local("several sources" if sources else "no source")
    if lone and dep_mode is None:
        # GCC refuses them ("you must specify either -M or -MM"): the local compile's own error.
        return Local(f"{lone} without -MD or -MMD")
    source = sources[0]
    if output is None:
        output = os.path.splitext(os.path.basename(source))[0] + ".o"
    if dep_mode:
        # The local preprocess writes the .d file; with -E its default target and
        # name would follow the scan's output, so name both as the compile would:
        # its target quoted for make (the driver's own -MQ: `a$b.o` is written a$$b.o).
        if not dep_target:
            deps += ["-MQ", output]
        if not dep_file:
            deps += ["-MF", _default_depfile(output)]
    return RemotePlan(compiler=compiler, source=source, output=output, language=_language(source),
                      flags=tuple(flags), dep_flags=tuple(deps))
