"""cli.cc_args: which compiles may go to a helper, decided from the command line alone."""
import os

import pytest

from cli.cc_args import Local, RemotePlan, plan


def test_one_source_to_one_object_goes_remote():
    p = plan(["gcc", "-O2", "-g", "-Iinclude", "-DX=1", "-c", "src/a.c", "-o", "obj/a.o"])
    assert isinstance(p, RemotePlan)
    assert (p.source, p.output, p.language) == ("src/a.c", "obj/a.o", "c")
    assert p.flags == ("-O2", "-g", "-Iinclude", "-DX=1") and p.dep_flags == ()
    assert plan(["g++", "-c", "x.cpp"]).language == "c++"


def test_the_default_object_is_the_source_basename_in_the_working_directory():
    assert plan(["cc", "-c", "src/lib/a.c"]).output == "a.o"


def test_dependency_flags_stay_in_the_scan_with_the_compiles_default_names():
    p = plan(["cc", "-MD", "-c", "a.c", "-o", "out/a.o"])
    assert p.dep_flags == ("-MD", "-MQ", "out/a.o", "-MF", "out/a.d")
    assert "-MD" not in p.flags
    given = plan(["c++", "-MMD", "-MT", "x.o", "-MF", "x.o.d", "-o", "x.o", "-c", "x.cc"])
    assert given.dep_flags == ("-MMD", "-MT", "x.o", "-MF", "x.o.d")
    assert plan(["cc", "-MD", "-c", "a.c"]).dep_flags == ("-MD", "-MQ", "a.o", "-MF", "a.d")
    glued = plan(["cc", "-MD", "-MFdeps/a.d", "-MQ$(OBJ)", "-c", "a.c"])
    assert glued.dep_flags == ("-MD", "-MFdeps/a.d", "-MQ$(OBJ)")


def test_scan_argv_writes_only_the_dependencies_and_lists_headers():
    argv = plan(["cc", "-Iinc", "-MD", "-c", "a.c", "-o", "a.o"]).scan_argv()
    assert argv == ["cc", "-Iinc", "-M", "-MQ", "a.o", "-MF", "a.d", "-H", "a.c"]
    assert plan(["cc", "-MMD", "-MP", "-c", "a.c"]).scan_argv() == [
        "cc", "-MM", "-MP", "-MQ", "a.o", "-MF", "a.d", "-H", "a.c"]
    # No dependency file asked for: none written.
    assert plan(["cc", "-c", "a.c"]).scan_argv() == ["cc", "-M", "-MF", os.devnull, "-H", "a.c"]


@pytest.mark.parametrize("deps, lone", [(["-MF", "x.d"], "-MF"), (["-MFx.d"], "-MF"), (["-MP"], "-MP"),
                                        (["-MT", "t"], "-MT"), (["-MQ", "t"], "-MQ"),
                                        (["-MP", "-MF", "x.d", "-MT", "t"], "-MP")])
def test_dependency_flags_without_md_or_mmd_stay_local(deps, lone):
    """GCC refuses them ("to generate dependencies you must specify either -M or -MM"); a helper,
    compiling without them on the scan's route, would succeed: not the local exit code."""
    decided = plan(["gcc", *deps, "-c", "a.c", "-o", "a.o"])
    assert decided == Local(f"{lone} without -MD or -MMD")
    for mode in ("-MD", "-MMD"):   # with one, before or after them, they go remote
        assert isinstance(plan(["gcc", *deps, mode, "-c", "a.c"]), RemotePlan)
        assert isinstance(plan(["gcc", mode, *deps, "-c", "a.c"]), RemotePlan)


def test_a_dependency_flag_before_md_keeps_the_compiles_default_names():
    """-MP first: the default target and file are still spelt out (the helper needs a target)."""
    assert plan(["cc", "-MP", "-MD", "-c", "a.c"]).dep_flags == ("-MP", "-MD", "-MQ", "a.o", "-MF", "a.d")
    assert plan(["cc", "-MT", "t", "-MMD", "-c", "a.c"]).dep_flags == ("-MT", "t", "-MMD", "-MF", "a.d")


@pytest.mark.parametrize("argv, because", [
    (["cc", "a.o", "b.o", "-o", "app"], "not a C or C++ source"),
    (["cc", "a.c", "-o", "app"], "no -c"),
    (["cc", "-E", "a.c"], "asks for no object"),
    (["cc", "-S", "-c", "a.c"], "asks for no object"),
    (["cc", "-M", "a.c"], "asks for no object"),
    (["cc", "-c", "a.c", "b.c"], "several sources"),
    (["cc", "-c", "-"], "stdin"),
    (["cc", "@args.rsp"], "response file"),
    (["cc", "-march=native", "-c", "a.c"], "processor"),
    (["cc", "-fplugin=evil.so", "-c", "a.c"], "-fplugin"),
    (["cc", "-B/tmp/evil", "-c", "a.c"], "-B"),
    (["cc", "-specs=x", "-c", "a.c"], "-specs"),
    (["cc", "-fprofile-use=x", "-c", "a.c"], "-fprofile"),
    (["cc", "-save-temps", "-c", "a.c"], "-save-temps"),
    (["cc", "-x", "c", "-c", "a.txt"], "-x"),
    (["cc", "--frobnicate", "-c", "a.c"], "does not know"),
    (["cc", "-c", "a.f90"], "not a C or C++ source"),
    (["cc"], "no arguments"),
])
def test_what_stays_local_and_why(argv, because):
    decided = plan(argv)
    assert isinstance(decided, Local) and because in decided.reason
