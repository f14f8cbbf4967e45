"""cluster.buildfile: valid YAML/JSON builds parse; each kind of bad file is
refused with a sentence that names the problem."""
from __future__ import annotations

import json

import pytest

from cluster.buildfile import (MAX_BUILD_BYTES, MAX_TASKS, BuildFileError, BuildSpec, TaskSpec,
                                   parse_build, topological_order)

HELLO_YAML = """\
name: hello
tasks:
  - id: compile-a
    cmd: cc -c a.c
  - id: compile-b
    cmd: cc -c b.c
    timeout: 30
    env: {CC: clang, LEVEL: 2}
  - id: link
    cmd: cc a.o b.o -o app
    deps: [compile-a, compile-b]
"""


def build(*tasks, name="b") -> dict:
    return {"name": name, "tasks": list(tasks)}


def refused(data, *fragments, filename=None) -> str:
    with pytest.raises(BuildFileError) as info:
        parse_build(data, filename=filename)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- valid inputs -------------------------------------------------------------------

def test_yaml_build_parses():
    spec = parse_build(HELLO_YAML.encode())
    assert spec.name == "hello"
    assert [t.id for t in spec.tasks] == ["compile-a", "compile-b", "link"]
    assert spec.task("link").deps == ["compile-a", "compile-b"]
    assert spec.task("compile-b").timeout == 30.0
    assert spec.task("compile-b").env == {"CC": "clang", "LEVEL": "2"}
    assert spec.task("compile-a") == TaskSpec(id="compile-a", cmd="cc -c a.c")


def test_json_build_parses_the_same_as_yaml():
    yaml_spec = parse_build(HELLO_YAML)
    as_json = json.dumps(yaml_spec.to_dict(), indent=2)
    assert parse_build(as_json) == yaml_spec
    assert parse_build(as_json.encode()) == yaml_spec


def test_dict_input_and_round_trip():
    spec = parse_build(HELLO_YAML)
    again = BuildSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec
    assert again.to_dict()["tasks"][2] == {"id": "link", "cmd": "cc a.o b.o -o app",
                                           "deps": ["compile-a", "compile-b"], "timeout": None, "env": {}}


def test_design_example_and_bom():
    text = "\ufeffname: hello\ntasks:\n  - id: compile-a\n    cmd: cc -c a.c\n" \
           "  - id: link\n    cmd: cc a.o -o app\n    deps: [compile-a]\n"
    spec = parse_build(text.encode("utf-8"))
    assert topological_order(spec) == ["compile-a", "link"]


def test_numeric_ids_become_text():
    spec = parse_build("name: 2024\ntasks:\n  - {id: 1, cmd: make}\n  - {id: 2, cmd: make, deps: [1]}\n")
    assert spec.name == "2024"
    assert spec.task("2").deps == ["1"]


def test_topological_order_respects_deps_and_file_order():
    spec = parse_build(build(
        {"id": "link", "cmd": "ld", "deps": ["b", "a"]},
        {"id": "b", "cmd": "cc b", "deps": ["gen"]},
        {"id": "a", "cmd": "cc a"},
        {"id": "gen", "cmd": "gen"},
    ))
    order = topological_order(spec)
    assert order == ["a", "gen", "b", "link"]


def test_ten_thousand_tasks_parse():
    tasks = [{"id": f"t{i}", "cmd": f"echo {i}", "deps": [f"t{i - 1}"] if i else []}
             for i in range(MAX_TASKS)]
    text = json.dumps(build(*tasks))
    spec = parse_build(text)
    assert len(spec.tasks) == MAX_TASKS
    assert topological_order(spec)[-1] == f"t{MAX_TASKS - 1}"
    yaml_text = "name: big\ntasks:\n" + "".join(
        f"  - id: t{i}\n    cmd: echo {i}\n" for i in range(MAX_TASKS))
    assert len(parse_build(yaml_text).tasks) == MAX_TASKS


# -- refusals -----------------------------------------------------------------------

def test_malformed_yaml_names_the_line():
    refused("name: x\ntasks:\n  - id: a\n    cmd: [unclosed\n", "not valid YAML", "line")


def test_malformed_json_names_the_line():
    message = refused('{"name": "x",\n "tasks": [\n {"id": "a" "cmd": "x"}]}', "not valid JSON", "line 3")
    assert "column" in message


def test_filename_is_prefixed():
    refused("name: x\n", "hello.yaml: ", "no tasks", filename="hello.yaml")


def test_not_utf8():
    refused(b"name: \xff\xfe\n", "not UTF-8")


@pytest.mark.parametrize("data, fragment", [
    ("", "empty"),
    ("- a\n- b\n", "must be a mapping"),
    ("just text", "must be a mapping"),
    ("[]", "must be a mapping"),
])
def test_not_a_mapping(data, fragment):
    refused(data, fragment)


@pytest.mark.parametrize("doc", [
    {"tasks": [{"id": "a", "cmd": "x"}]},
    {"name": "", "tasks": [{"id": "a", "cmd": "x"}]},
    {"name": "   ", "tasks": [{"id": "a", "cmd": "x"}]},
    {"name": ["x"], "tasks": [{"id": "a", "cmd": "x"}]},
])
def test_missing_or_empty_name(doc):
    refused(doc, "no name")


def test_missing_tasks():
    refused({"name": "x"}, "no tasks")


def test_empty_task_list():
    refused({"name": "x", "tasks": []}, "task list is empty")


def test_tasks_not_a_list():
    refused({"name": "x", "tasks": {"a": "make"}}, "'tasks' must be a list")


def test_task_not_a_mapping():
    refused(build("make all"), "task #1 must be a mapping")


@pytest.mark.parametrize("task", [{"cmd": "x"}, {"id": "", "cmd": "x"}, {"id": None, "cmd": "x"}])
def test_task_without_id(task):
    refused(build({"id": "ok", "cmd": "x"}, task), "task #2 has no id")


@pytest.mark.parametrize("bad_id", ["a/b", "a b", "../x", "..", ".", "é", "a:b", "x" * 129, "",
                                    1.5, True, ["a"]])
def test_bad_id(bad_id):
    if bad_id == "":
        refused(build({"id": bad_id, "cmd": "x"}), "no id")
    elif isinstance(bad_id, str) and len(bad_id) > 128:
        refused(build({"id": bad_id, "cmd": "x"}), "129 characters", "limit is 128")
    else:
        refused(build({"id": bad_id, "cmd": "x"}), "task #1 has id", repr(bad_id))


def test_good_ids():
    spec = parse_build(build({"id": "A.b_c-9", "cmd": "x"}, {"id": "y" * 128, "cmd": "x"}))
    assert len(spec.tasks) == 2


def test_duplicate_id_is_named():
    refused(build({"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y"}, {"id": "a", "cmd": "z"}),
            "'a'", "more than one task")


@pytest.mark.parametrize("cmd, fragment", [(None, "is empty"), ("", "is empty"), ("  ", "is empty"),
                                           (["cc", "a.c"], "is a list"), (42, "is a number")])
def test_bad_cmd_names_the_task(cmd, fragment):
    task = {"id": "compile", "cmd": cmd} if cmd is not None else {"id": "compile"}
    refused(build(task), "task 'compile'", "'cmd'", fragment)


def test_deps_not_a_list():
    refused(build({"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y", "deps": "a"}),
            "task 'b'", "'deps' must be a list")


def test_dep_entry_not_a_name():
    refused(build({"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y", "deps": [{"id": "a"}]}),
            "task 'b'", "every entry of 'deps'")


def test_unknown_dependency_names_both():
    refused(build({"id": "a", "cmd": "x"}, {"id": "link", "cmd": "y", "deps": ["a", "compile-z"]}),
            "'link'", "'compile-z'", "not a task")


def test_cycle_names_its_tasks():
    message = refused(build({"id": "start", "cmd": "x"},
                            {"id": "a", "cmd": "x", "deps": ["start", "c"]},
                            {"id": "b", "cmd": "x", "deps": ["a"]},
                            {"id": "c", "cmd": "x", "deps": ["b"]},
                            {"id": "after", "cmd": "x", "deps": ["c"]}),
                      "cycle")
    cycle = message.split("cycle: ")[1].split(" (")[0].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]
    assert "start" not in cycle and "after" not in cycle


def test_self_dependency_is_a_cycle():
    refused(build({"id": "a", "cmd": "x", "deps": ["a"]}), "'a' depends on itself", "cycle")


def test_too_many_tasks():
    tasks = [{"id": f"t{i}", "cmd": "x"} for i in range(MAX_TASKS + 1)]
    refused(build(*tasks), f"{MAX_TASKS + 1} tasks", f"limit is {MAX_TASKS}")


@pytest.mark.parametrize("timeout", [0, -5, "10", float("inf"), float("nan"), True, [1]])
def test_bad_timeout_names_the_task(timeout):
    refused(build({"id": "slow", "cmd": "x", "timeout": timeout}), "task 'slow'", "positive number")


def test_unknown_task_keys_are_named():
    refused(build({"id": "a", "cmd": "x", "dependencies": ["b"], "retries": 3}),
            "task 'a'", "unknown keys", "'dependencies'", "'retries'")


@pytest.mark.parametrize("env, fragment", [
    (["A=1"], "'env' must be a mapping"),
    ({"1BAD": "x"}, "'1BAD' is not a valid environment variable name"),
    ({"A": ["x"]}, "environment variable A must be text or a number"),
])
def test_bad_env(env, fragment):
    refused(build({"id": "a", "cmd": "x", "env": env}), "task 'a'", fragment)


def test_input_larger_than_limit():
    padding = "#" * MAX_BUILD_BYTES
    data = f"name: x\ntasks:\n  - id: a\n    cmd: x\n{padding}\n"
    refused(data.encode(), "1 MiB")
    refused(data, "1 MiB")


def test_dict_larger_than_limit():
    tasks = [{"id": f"t{i}", "cmd": "x" * 200} for i in range(MAX_TASKS)]
    refused(build(*tasks), "1 MiB")


def test_yaml_alias_expansion_is_bounded():
    ids = [f"t{i}" for i in range(3000)]
    lines = ["name: bomb", "tasks:"]
    lines += [f"  - {{id: {t}, cmd: x}}" for t in ids]
    lines.append(f"  - {{id: first, cmd: x, deps: &all [{', '.join(ids)}]}}")
    lines += [f"  - {{id: d{i}, cmd: x, deps: *all}}" for i in range(3000)]
    text = "\n".join(lines) + "\n"
    assert len(text.encode()) < MAX_BUILD_BYTES
    refused(text, "1 MiB", "expanded")


def test_decoded_json_that_is_not_a_mapping():
    refused([{"id": "a", "cmd": "x"}], "must be a mapping", "it is a list")
    refused(None, "must be a mapping", "empty")


# -- hostile input: errors stay small, cheap and name the field -------------------------

def alias_bomb(levels: int, width: int = 9) -> list[str]:
    """YAML lines defining a0..a<levels-1>, each a list of `width` copies of the one before."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return lines


def test_billion_laughs_is_refused_cheaply_with_a_short_message():
    top = "*a8"
    text = "\n".join(alias_bomb(9) + ["name: x", f"tasks: [{{id: t, cmd: x, deps: [{top}]}}]"]) + "\n"
    assert len(text) < 600
    message = refused(text, "1 MiB", "expanded")
    assert len(message) < 300


@pytest.mark.parametrize("field, path", [
    ("name: *a4\ntasks: [{id: t, cmd: x}]", "name"),
    ("name: x\ntasks: [{id: *a4, cmd: x}]", "tasks[0].id"),
    ("name: x\ntasks: [{id: t, cmd: *a4}]", "tasks[0].cmd"),
    ("name: x\ntasks: [{id: u, cmd: x}, {id: t, cmd: x, deps: [u, *a4]}]", "tasks[1].deps[1]"),
    ("name: x\ntasks: [{id: t, cmd: x, timeout: *a4}]", "tasks[0].timeout"),
    ("name: x\ntasks: [{id: t, cmd: x, env: {A: *a4}}]", "tasks[0].env.A"),
])
def test_large_values_are_not_echoed_and_the_path_is_named(field, path):
    # 9**5 = 59,049 copies: small enough to get past the expansion limit,
    # large enough that echoing it would make a 300 KB message.
    text = "\n".join(alias_bomb(5)) + "\n" + field + "\n"
    message = refused(text, f"(at {path})")
    assert len(message) < 400, message[:400]


@pytest.mark.parametrize("task, path", [
    ({"id": "a", "cmd": "x", "env": {"1" + "x" * 100_000: "v"}}, "tasks[0].env"),
    ({"id": "a", "cmd": "x", "y" * 100_000: 1}, "tasks[0]"),
    ({"id": "a", "cmd": "x", "deps": [{"id": "y" * 100_000}]}, "tasks[0].deps[0]"),
    ({"id": 10 ** 5000, "cmd": "x"}, "tasks[0].id"),
    ({"id": "a", "cmd": "x", "env": {"A": 10 ** 5000}}, "tasks[0].env.A"),
])
def test_long_keys_and_values_are_not_echoed(task, path):
    message = refused(build(task), f"(at {path})")
    assert len(message) < 400, message[:400]


def test_a_recursive_alias_is_refused():
    refused("name: x\ntasks: [{id: t, cmd: x, deps: &d [u, *d]}]\n", "refers to itself")


@pytest.mark.parametrize("template, path", [
    ('{{"name": "x", "tasks": [{{"id": "t", "cmd": "x", "timeout": {n}}}]}}', "tasks[0].timeout"),
    ('{{"name": "x", "tasks": [{{"id": {n}, "cmd": "x"}}]}}', "tasks[0].id"),
    ("name: x\ntasks: [{{id: t, cmd: x, env: {{A: {n}}}}}]\n", "tasks[0].env.A"),
    ("name: x\ntasks: [{{id: t, cmd: x, timeout: {n}}}]\n", "tasks[0].timeout"),
    ("name: {n}\ntasks: [{{id: t, cmd: x}}]\n", "name"),
])
def test_a_number_with_5001_digits_is_a_build_file_error(template, path):
    text = template.format(n="9" * 5001)
    message = refused(text, "5001 digits", f"(at {path})")
    assert len(message) < 300
    refused(text.encode(), "5001 digits")


def test_a_timeout_too_large_for_a_float_is_refused():
    refused(build({"id": "slow", "cmd": "x", "timeout": 10 ** 400}), "task 'slow'", "(at tasks[0].timeout)")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_env_numbers_must_be_finite(value):
    refused(build({"id": "a", "cmd": "x", "env": {"A": value}}), "(at tasks[0].env.A)")


@pytest.mark.parametrize("doc, path", [
    (build("make all"), "tasks[0]"),
    (build({"id": "a", "cmd": "x"}, {"cmd": "x"}), "tasks[1].id"),
    (build({"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y", "deps": "a"}), "tasks[1].deps"),
    (build({"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y", "deps": ["a", "zz"]}), "tasks[1].deps[1]"),
    (build({"id": "a", "cmd": "x"}, {"id": "a", "cmd": "z"}), "tasks[1].id"),
    (build({"id": "a", "cmd": "x", "retries": 3}), "tasks[0].retries"),
    (build({"id": "a", "cmd": "x", "env": ["A=1"]}), "tasks[0].env"),
    ({"name": "x", "tasks": {"a": "make"}}, "tasks"),
    ({"tasks": [{"id": "a", "cmd": "x"}]}, "name"),
])
def test_errors_name_the_path_of_the_field(doc, path):
    refused(doc, f"(at {path})")


def test_the_path_survives_the_filename_prefix():
    with pytest.raises(BuildFileError) as info:
        parse_build(build({"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y", "deps": "a"}), filename="f.yaml")
    assert str(info.value).startswith("f.yaml: ") and info.value.path == "tasks[1].deps"


def test_a_yaml_value_its_constructor_refuses_is_a_build_file_error():
    refused("name: 2024-13-01\ntasks: [{id: a, cmd: x}]\n", "not valid YAML", "month")


def test_a_long_cycle_is_named_in_a_short_sentence():
    n = 5000
    tasks = [{"id": f"t{i}", "cmd": "x", "deps": [f"t{(i + 1) % n}"]} for i in range(n)]
    message = refused(build(*tasks), "cycle", f"{n - 12} more", "(at tasks)")
    assert len(message) < 400
    cycle = message.split("cycle: ")[1].split(" (")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and len(cycle) == 14


def test_the_hello_example_really_compiles_and_fails_without_a_compiler(tmp_path):
    """examples/hello.yaml hides nothing: each task compiles, links and runs its
    program in its own directory (files do not travel between tasks), and
    fails when the agent has no compiler."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from cluster.buildfile import parse_build

    text = (Path(__file__).resolve().parent.parent / "examples" / "hello.yaml").read_text()
    assert "|| echo" not in text and "|| true" not in text
    spec = parse_build(text)
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    no_compiler = tmp_path / "no-compiler"  # an agent with the shell's tools but no cc
    no_compiler.mkdir()
    (no_compiler / "cat").symlink_to(shutil.which("cat"))
    for path, ok in ((os.environ["PATH"], True), (str(no_compiler), False)):
        for task in spec.tasks:
            if task.deps:
                continue
            cwd = tmp_path / f"{task.id}-{ok}"
            cwd.mkdir()
            done = subprocess.run(["/bin/sh", "-c", task.cmd], cwd=cwd, env={"PATH": path},
                                  capture_output=True, text=True, timeout=60)
            assert (done.returncode == 0) is ok, (task.id, done.stdout, done.stderr)
            if not ok:
                assert "cc: not found" in done.stderr, done.stderr


# -- env: what the agent hands to the task's process (agent/sandbox.py) ------------------

def test_a_build_level_env_reaches_every_task_under_the_tasks_own():
    spec = parse_build("name: b\nenv: {CC: gcc, MODE: release}\n"
                       "tasks:\n  - {id: a, cmd: x, env: {CC: clang}}\n  - {id: b, cmd: y}\n")
    assert spec.env == {"CC": "gcc", "MODE": "release"}
    assert spec.task_env("a") == {"CC": "clang", "MODE": "release"}
    assert spec.task_env("b") == {"CC": "gcc", "MODE": "release"}
    assert parse_build(spec.to_dict()) == spec


@pytest.mark.parametrize("env, path, words", [
    ({"A": "x\0y"}, "env.A", "NUL"),
    ({"A": "x" * (64 * 1024 + 1)}, "env.A", "longer than the limit"),
    ({"A" * 257: "x"}, "env", "not a valid environment variable name"),
    ({"1A": "x"}, "env", "not a valid environment variable name"),
    ({"A": [1]}, "env.A", "text or a number"),
])
def test_env_that_no_process_could_be_given_is_refused(env, path, words):
    refused({"name": "b", "env": env, "tasks": [{"id": "a", "cmd": "x"}]}, words, f"(at {path})")
    refused(build({"id": "a", "cmd": "x", "env": env}), words, f"(at tasks[0].{path})")
