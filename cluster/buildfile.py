"""Build files: parse, validate and order a build's tasks (docs/design.md section 5).

A build file is YAML or JSON:

    name: hello
    env: {LANG: C.UTF-8}      # optional, for every task (a task's own env wins)
    tasks:
      - id: compile-a
        cmd: cc -c a.c
      - id: link
        cmd: cc a.o -o app
        deps: [compile-a]
        timeout: 600          # seconds, optional
        env: {CC: clang}      # optional

`parse_build` accepts the file's bytes or text, or an already-decoded dict
(the web API's JSON body), and returns a `BuildSpec` or raises
`BuildFileError` with one sentence naming the problem and the path of the
field (`tasks[3].deps`), so the CLI and the web API can show it to the user
as is. A value quoted in a message is cut short (cluster.untrusted.quote),
YAML aliases that would expand past the size limit are refused before
anything walks the expansion, and a number too long to convert is refused
where it stands. Everything the coordinator relies
on later is checked here: task ids are plain names (they become etcd key
segments and directory names), every dependency exists, there is no cycle,
and the whole spec fits into one etcd value (the web API stores it as one
key; etcd refuses requests over 1.5 MiB). `env` names are environment
variable names and every value fits one environment string, since the agent
hands them to the task's process (agent/sandbox.py).

Over 400 lines: the format and every check of untrusted input, with the path
of each error, belong together and read top to bottom; the YAML safety is
cluster/untrusted.py.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import math
import re
from typing import Any

import yaml

from cluster.untrusted import AliasBomb, HugeNumber, int_or_huge, load_yaml, quote
from lease.errors import BatonError

MAX_BUILD_BYTES = 1024 * 1024
MAX_TASKS = 10_000
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
# One environment string must fit execve's limit per string (Linux: 128 KiB).
MAX_ENV_VALUE_BYTES = 64 * 1024
MAX_ENV_NAME_LENGTH = 256
TASK_KEYS = frozenset({"id", "cmd", "deps", "timeout", "env"})

_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Units (one per YAML node plus its text) an alias-free file under 1 MiB
# stays well below; only aliases reach it.
MAX_EXPANDED_UNITS = 4 * MAX_BUILD_BYTES


class BuildFileError(BatonError, ValueError):
    """The build file is invalid; the message is one sentence naming the problem,
    followed by "(at <path>)" when one field is at fault (`path`, e.g. "tasks[3].deps")."""

    def __init__(self, problem: str, path: str | None = None):
        super().__init__(f"{problem} (at {path})" if path else problem)
        self.problem = problem
        self.path = path


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: a shell command, the tasks it waits for, an optional timeout (s) and env."""

    id: str
    cmd: str
    deps: list[str] = dataclasses.field(default_factory=list)
    timeout: float | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "cmd": self.cmd, "deps": list(self.deps),
                "timeout": self.timeout, "env": dict(self.env)}


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """A validated build: its name, its tasks in file order, and the env every task gets
    (under the task's own, see `task_env`)."""

    name: str
    tasks: list[TaskSpec]
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "env": dict(self.env), "tasks": [t.to_dict() for t in self.tasks]}

    def task_env(self, task_id: str) -> dict[str, str]:
        """The environment the build file gives one task: the build's env, then the task's."""
        return {**self.env, **self.task(task_id).env}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> "BuildSpec":
        """Rebuild (and re-validate) a spec from to_dict output, e.g. a stored builds/<id> value."""
        return parse_build(data)

    def task(self, task_id: str) -> TaskSpec:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)


def parse_build(data: bytes | str | dict, filename: str | None = None) -> BuildSpec:
    """Parse and validate a build file; raise BuildFileError naming the first problem."""
    where = f"{filename}: " if filename else ""
    try:
        doc = _load(data) if isinstance(data, (bytes, bytearray, memoryview, str)) else data
        return _validate(doc)
    except BuildFileError as exc:
        if not where:
            raise
        raise BuildFileError(where + exc.problem, exc.path) from None


def topological_order(spec: BuildSpec) -> list[str]:
    """Task ids so that every task comes after its dependencies.

    Among tasks that are ready at the same time, the one listed first in the
    file comes first, so the order is stable. Raises BuildFileError on a cycle
    (parse_build has refused those already).
    """
    index = {t.id: i for i, t in enumerate(spec.tasks)}
    waiting = {t.id: len(t.deps) for t in spec.tasks}
    dependents: dict[str, list[str]] = {t.id: [] for t in spec.tasks}
    for t in spec.tasks:
        for d in t.deps:
            dependents[d].append(t.id)
    ready = [index[t] for t, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        tid = spec.tasks[heapq.heappop(ready)].id
        order.append(tid)
        for nxt in dependents[tid]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, index[nxt])
    if len(order) != len(spec.tasks):
        stuck = {t.id: t.deps for t in spec.tasks if waiting[t.id] > 0}
        raise BuildFileError(_cycle_sentence(stuck), "tasks")
    return order


# -- loading -------------------------------------------------------------------

def _load(data: bytes | str) -> Any:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > MAX_BUILD_BYTES:
            raise BuildFileError(f"the build file is {len(raw)} bytes; the limit is "
                                 f"{MAX_BUILD_BYTES} bytes (1 MiB)")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BuildFileError(f"the build file is not UTF-8 text (bad byte at offset {exc.start})") from None
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_BUILD_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BUILD_BYTES:
            raise BuildFileError(f"the build file is larger than the limit of {MAX_BUILD_BYTES} bytes (1 MiB)")
        text = text.lstrip("\ufeff")
    else:  # pragma: no cover - parse_build only passes bytes and text here
        raise BuildFileError(f"a build file must be bytes or text, not {_kind(data)}")
    if not text.strip():
        raise BuildFileError("the build file is empty")
    try:
        return json.loads(text, parse_int=int_or_huge)
    except (json.JSONDecodeError, RecursionError) as json_exc:
        json_error = json_exc
    try:
        return load_yaml(text, MAX_EXPANDED_UNITS)
    except AliasBomb as exc:
        if exc.recursive:
            raise BuildFileError("the build file refers to itself through a YAML alias "
                                 "(an anchor used inside its own value)") from None
        raise BuildFileError(f"the build is larger than the limit of {MAX_BUILD_BYTES} bytes "
                             "(1 MiB) once its YAML aliases are expanded") from None
    except yaml.YAMLError as exc:
        if text.lstrip()[:1] in ("{", "[") and isinstance(json_error, json.JSONDecodeError):
            # It was meant to be JSON: JSON's message is the helpful one.
            raise BuildFileError(f"the build file is not valid JSON: {json_error.msg} "
                                 f"at line {json_error.lineno}, column {json_error.colno}") from None
        raise BuildFileError(f"the build file is not valid YAML: {_yaml_problem(exc)}") from None
    except ValueError as exc:  # a constructor's own refusal, e.g. the date 2024-13-01
        raise BuildFileError(f"the build file is not valid YAML: {str(exc)[:200]}") from None
    except RecursionError:
        raise BuildFileError("the build file is nested too deeply to read") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem


# -- validation ----------------------------------------------------------------

class _Budget:
    """Counts the bytes the spec will take as JSON while validating, so a YAML
    file that expands through aliases (one list referenced 10,000 times)
    is refused before it costs time and memory."""

    def __init__(self) -> None:
        self.left = MAX_BUILD_BYTES

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise BuildFileError(f"the build is larger than the limit of {MAX_BUILD_BYTES} bytes "
                                 "(1 MiB) once expanded")


def _kind(value: Any) -> str:
    """What a YAML/JSON value is, in words a build-file author uses."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, HugeNumber):
        return f"a number of {value.digits} digits"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "empty"
    return f"a {type(value).__name__}"


def _plain_name(value: Any) -> str | None:
    """A name given as text, or as a whole number YAML read as int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        # Longer than any id or name may be, and str() refuses past 4,300 digits.
        return str(value) if value.bit_length() <= 1000 else None
    if isinstance(value, str):
        return value
    return None


def _field(base: str, key: Any) -> str:
    """base.key for a key that reads as a name, else base (the key is quoted in the sentence)."""
    return f"{base}.{key}" if isinstance(key, str) and _ENV_NAME_RE.match(key) and len(key) <= 64 else base


def _validate(doc: Any) -> BuildSpec:
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else _kind(doc)
        raise BuildFileError(f"a build file must be a mapping with 'name' and 'tasks', but it is {kind}")
    budget = _Budget()

    raw_name = doc.get("name")
    name = _plain_name(raw_name)
    if name is None or not name.strip():
        given = "" if raw_name is None or isinstance(raw_name, str) else f" (it is {_kind(raw_name)})"
        raise BuildFileError(f"the build has no name{given}: add 'name: <text>'", "name")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise BuildFileError(f"the build name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}",
                             "name")
    budget.spend(len(name) + 32)
    env = _check_env(doc.get("env"), "the build", "env", budget)

    raw_tasks = doc.get("tasks")
    if raw_tasks is None:
        raise BuildFileError("the build has no tasks: add 'tasks:' with a list of tasks", "tasks")
    if not isinstance(raw_tasks, list):
        raise BuildFileError(f"'tasks' must be a list of tasks, not {_kind(raw_tasks)}", "tasks")
    if not raw_tasks:
        raise BuildFileError("the build's task list is empty", "tasks")
    if len(raw_tasks) > MAX_TASKS:
        raise BuildFileError(f"the build has {len(raw_tasks)} tasks; the limit is {MAX_TASKS}", "tasks")

    tasks: list[TaskSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_tasks):
        task = _validate_task(raw, index, budget)
        if task.id in seen:
            raise BuildFileError(f"task id {task.id!r} is used by more than one task", f"tasks[{index}].id")
        seen.add(task.id)
        tasks.append(task)

    for index, task in enumerate(tasks):
        for dep in task.deps:
            if dep not in seen:
                at = [_plain_name(d) for d in raw_tasks[index]["deps"]].index(dep)
                raise BuildFileError(f"task {task.id!r} depends on {quote(dep)}, which is not a task of this "
                                     "build", f"tasks[{index}].deps[{at}]")
    spec = BuildSpec(name=name, tasks=tasks, env=env)
    topological_order(spec)  # raises on a cycle, naming its tasks
    return spec


def _validate_task(raw: Any, index: int, budget: _Budget) -> TaskSpec:
    at = f"tasks[{index}]"
    if not isinstance(raw, dict):
        raise BuildFileError(f"task #{index + 1} must be a mapping with 'id' and 'cmd', "
                             f"not {_kind(raw)}", at)
    task_id = _check_id(raw.get("id"), f"task #{index + 1}", f"{at}.id")
    label = f"task {task_id!r}"
    unknown = [k for k in raw if k not in TASK_KEYS]
    if unknown:
        raise BuildFileError(f"{label} has unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(sorted(quote(k) for k in unknown[:10]))}; allowed are "
                             f"{', '.join(sorted(TASK_KEYS))}", _field(at, unknown[0]))

    cmd = raw.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip():
        what = "is empty" if isinstance(cmd, str) or cmd is None else f"is {_kind(cmd)}"
        raise BuildFileError(f"{label} needs a shell command in 'cmd' (text), but it {what}", f"{at}.cmd")
    budget.spend(len(task_id) + len(cmd.encode()) + 64)

    raw_deps = raw.get("deps", [])
    if raw_deps is None:
        raw_deps = []
    if not isinstance(raw_deps, list):
        raise BuildFileError(f"{label}: 'deps' must be a list of task ids, not {_kind(raw_deps)}", f"{at}.deps")
    budget.spend(4 * len(raw_deps))  # before walking it: the list may be an alias
    deps: list[str] = []
    listed: set[str] = set()
    for position, dep in enumerate(raw_deps):
        dep_id = _plain_name(dep)
        if dep_id is None:
            raise BuildFileError(f"{label}: every entry of 'deps' must be a task id, not {quote(dep)}",
                                 f"{at}.deps[{position}]")
        if dep_id == task_id:
            raise BuildFileError(f"task {task_id!r} depends on itself (a cycle: {task_id} -> {task_id})",
                                 f"{at}.deps[{position}]")
        if dep_id not in listed:
            listed.add(dep_id)
            deps.append(dep_id)
            budget.spend(len(dep_id))

    timeout = raw.get("timeout")
    if timeout is not None:
        if not _positive_seconds(timeout):
            raise BuildFileError(f"{label}: 'timeout' must be a positive number of seconds, not {quote(timeout)}",
                                 f"{at}.timeout")
        timeout = float(timeout)

    env = _check_env(raw.get("env"), label, f"{at}.env", budget)
    return TaskSpec(id=task_id, cmd=cmd, deps=deps, timeout=timeout, env=env)


def _finite(value: Any) -> bool:
    """A real number (no bool) that converts to a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past the float range
        return False


def _positive_seconds(value: Any) -> bool:
    return _finite(value) and value > 0


def _check_id(value: Any, label: str, at: str) -> str:
    task_id = _plain_name(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BuildFileError(f"{label} has no id: add 'id: <name>'", at)
    if task_id is None:
        raise BuildFileError(f"{label} has id {quote(value)}; an id must be a name (text)", at)
    if len(task_id) > MAX_ID_LENGTH:
        raise BuildFileError(f"{label} has an id of {len(task_id)} characters; the limit is {MAX_ID_LENGTH}", at)
    if not _ID_RE.match(task_id) or set(task_id) == {"."}:
        raise BuildFileError(f"{label} has id {task_id!r}; ids may only use letters, digits, '.', '_' "
                             "and '-' (and not only dots)", at)
    return task_id


def _check_env(raw: Any, label: str, at: str, budget: _Budget) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BuildFileError(f"{label}: 'env' must be a mapping of variable names to values, "
                             f"not {_kind(raw)}", at)
    env: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key) or len(key) > MAX_ENV_NAME_LENGTH:
            raise BuildFileError(f"{label}: {quote(key)} is not a valid environment variable name (letters, "
                                 f"digits and '_', not starting with a digit, at most {MAX_ENV_NAME_LENGTH})", at)
        if not isinstance(value, str) and not _finite(value):
            what = quote(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _kind(value)
            raise BuildFileError(f"{label}: environment variable {key} must be text or a number, not {what}",
                                 _field(at, key))
        env[key] = str(value)
        if "\0" in env[key]:
            raise BuildFileError(f"{label}: environment variable {key} contains a NUL character, which "
                                 "an environment cannot carry", _field(at, key))
        if len(env[key].encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE_BYTES:
            raise BuildFileError(f"{label}: environment variable {key} is longer than the limit of "
                                 f"{MAX_ENV_VALUE_BYTES} bytes", _field(at, key))
        budget.spend(len(key) + len(env[key].encode()) + 6)
    return env


def _cycle_sentence(deps_of: dict[str, list[str]]) -> str:
    """Find one cycle among tasks that never became ready and name its tasks in order."""
    # Every stuck task has a stuck dependency, so walking stuck deps from any
    # stuck task must eventually revisit a task: that loop is the cycle.
    start = next(iter(deps_of))
    path: list[str] = []
    position: dict[str, int] = {}
    node = start
    while node not in position:
        position[node] = len(path)
        path.append(node)
        node = next(d for d in deps_of[node] if d in deps_of)
    cycle = path[position[node]:]
    # Report in dependency order: a needs b needs c ... needs a; a long
    # cycle (up to MAX_TASKS ids) is cut so the sentence stays readable.
    shown = cycle + [cycle[0]]
    if len(cycle) > 20:
        shown = shown[:10] + [f"... {len(cycle) - 12} more"] + shown[-3:]
    return ("the tasks form a dependency cycle: " + " -> ".join(shown)
            + " (each depends on the next)")
