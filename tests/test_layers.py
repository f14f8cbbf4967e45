"""Imports run one way: cli -> {coordinator, agent, web} -> cluster -> lease.

Every .py file of the product packages is read with `ast` (module-level and
function-level imports, relative imports resolved, also
`importlib.import_module("...")` with a literal name); the test fails on an
import whose arrow runs against the layers, and on a circle of imports
between modules (also inside one package, also through a function-level
import: it only delays the circle to the first call). Each failure names the
module, the line and the offending arrow.

bench/ and tests/ are not product code: they may import anything, nothing
of the product may import them.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("lease", "cluster", "coordinator", "agent", "web", "cli")
# Which packages each product package may import (besides itself). Packages
# not listed here and not in KNOWN (the standard library, grpc, flask...) are
# not ours and not checked.
ALLOWED = {
    "cli": {"coordinator", "agent", "web", "cluster", "lease"},
    "coordinator": {"cluster", "lease"},
    "agent": {"cluster", "lease"},
    "web": {"cluster", "lease"},
    "cluster": {"lease"},
    "lease": set(),
}
KNOWN = set(PRODUCT) | {"bench", "tests"}


@dataclass(frozen=True)
class Import:
    module: str    # the importing module, e.g. "coordinator.daemon"
    path: str      # its file, relative to the root
    line: int
    target: str    # the imported module (the longest known prefix when the name is ours)


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_tree(root: Path = ROOT, packages: tuple[str, ...] = PRODUCT) -> dict[str, tuple[str, str]]:
    """{module: (path relative to root, source)} for every .py file of the packages."""
    sources = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            sources[module_name(rel)] = (rel.as_posix(), path.read_text())
    return sources


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:-(level - 1)] if level - 1 <= len(base) else []
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: str, source: str, modules: set[str]) -> list[Import]:
    """Every import of ours in `source`, wherever it is written (module level, in a
    function, under `if TYPE_CHECKING`). `from a import b` counts as importing the
    module a.b when that is a module, else as importing a."""
    is_package = path.endswith("__init__.py")
    found: list[Import] = []

    def add(line: int, target: str) -> None:
        if target.split(".")[0] in KNOWN:
            found.append(Import(module, path, line, target))

    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                add(node.lineno, sub if sub in modules else base)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            add(node.lineno, node.args[0].value)
    return found


def layer_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        source, target = imp.module.split(".")[0], imp.target.split(".")[0]
        if source == target or source not in ALLOWED or target in ALLOWED[source]:
            continue
        problems.append(f"{imp.path}:{imp.line}: {imp.module} imports {imp.target} "
                        f"({source} -> {target} runs against the layers)")
    return problems


def _owner(target: str, modules: set[str]) -> str | None:
    """The module an import name loads last: the name itself or its longest known prefix."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def cycles(imports: list[Import], modules: set[str]) -> list[str]:
    """One message per circle of imports (a strongly connected set of modules), naming
    each arrow of one circle through it with its line."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        target = _owner(imp.target, modules)
        if target is not None and target != imp.module:
            edges.setdefault(imp.module, {}).setdefault(target, imp)
    # Tarjan's strongly connected components, iteratively (no recursion limit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    problems = []
    for component in components:
        members = set(component)
        path = _circle(component[0], members, edges)
        arrows = "; ".join(f"{e.path}:{e.line}: {e.module} -> {_owner(e.target, modules)}" for e in path)
        problems.append(f"import circle through {', '.join(component)}: {arrows}")
    return problems


def _circle(start: str, members: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """A shortest path of imports from start back to start inside one component (breadth first)."""
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child, imp in sorted(edges.get(node, {}).items()):
                if child not in members or child in previous:
                    continue
                previous[child] = imp
                if child == start:
                    path, at = [], start
                    while True:
                        path.append(previous[at])
                        at = previous[at].module
                        if at == start:
                            return path[::-1]
                following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # a component always has one


def check(sources: dict[str, tuple[str, str]]) -> list[str]:
    """Every layer violation and import circle in {module: (path, source)}."""
    modules = set(sources)
    imports = [imp for module, (path, source) in sorted(sources.items())
               for imp in imports_of(module, path, source, modules)]
    return layer_violations(imports) + cycles(imports, modules)


# ---------------------------------------------------------------- the checker itself

def _tree(**files: str) -> dict[str, tuple[str, str]]:
    """Synthetic modules: keyword "coordinator__daemon" is the module coordinator.daemon
    (file coordinator/daemon.py); a trailing "__init" makes it a package's __init__.py."""
    sources = {}
    for key, source in files.items():
        parts = key.split("__")
        if parts[-1] == "init":
            sources[".".join(parts[:-1])] = ("/".join(parts[:-1]) + "/__init__.py", source)
        else:
            sources[".".join(parts)] = ("/".join(parts) + ".py", source)
    return sources


def test_checker_accepts_downward_imports():
    assert check(_tree(
        cli__main="import coordinator.daemon\nfrom web import app\nfrom lease import client\n",
        coordinator__daemon="from cluster.keys import Keys\nfrom . import ha\nimport grpc\n",
        coordinator__ha="import os\n",
        cluster__keys="from lease.client import connect\n",
        lease__client="from .errors import EtcdError\n",
        lease__errors="",
        web__init="from cluster import keys\n",
    )) == []


def test_checker_names_module_line_and_arrow_of_an_upward_import():
    problems = check(_tree(
        cluster__keys="import json\n\n\ndef f():\n    from coordinator.daemon import run\n",
        coordinator__daemon="",
    ))
    assert problems == ["cluster/keys.py:5: cluster.keys imports coordinator.daemon "
                        "(cluster -> coordinator runs against the layers)"]


def test_checker_resolves_relative_imports_across_packages():
    problems = check(_tree(
        coordinator__runtime__init="",
        coordinator__runtime__store="from ...web import views\nfrom .. import ha\nfrom . import scheduler\n",
        coordinator__runtime__scheduler="",
        coordinator__ha="",
        web__views="",
    ))
    assert problems == ["coordinator/runtime/store.py:1: coordinator.runtime.store imports web.views "
                        "(coordinator -> web runs against the layers)"]


def test_checker_refuses_siblings_bench_tests_and_cli_and_literal_import_module():
    problems = check(_tree(
        agent__core="import web\nfrom bench.pool import AgentPool\n",
        web__init="import importlib\nimportlib.import_module('coordinator.daemon')\n",
        lease__client="from tests.harness import etcd\nfrom cluster import keys\n",
        cli__main="from bench import pool\nfrom cli import demo\n",
        cli__demo="",
    ))
    arrows = sorted(p.split(" (")[1] for p in problems)
    assert arrows == ["agent -> bench runs against the layers)", "agent -> web runs against the layers)",
                      "cli -> bench runs against the layers)", "lease -> cluster runs against the layers)",
                      "lease -> tests runs against the layers)", "web -> coordinator runs against the layers)"]


def test_checker_finds_a_circle_inside_one_package_through_a_function_level_import():
    problems = check(_tree(
        coordinator__a="from coordinator import b\n",
        coordinator__b="import os\n\n\ndef later():\n    from .c import x\n",
        coordinator__c="from coordinator.a import y\n",
        coordinator__d="from coordinator import a\n",  # imports into the circle, not part of it
    ))
    assert problems == [
        "import circle through coordinator.a, coordinator.b, coordinator.c: "
        "coordinator/a.py:1: coordinator.a -> coordinator.b; "
        "coordinator/b.py:5: coordinator.b -> coordinator.c; "
        "coordinator/c.py:1: coordinator.c -> coordinator.a"]


def test_checker_counts_a_package_init_that_imports_back_as_a_circle():
    problems = check(_tree(
        cluster__init="from cluster.keys import Keys\n",
        cluster__keys="from cluster import names\n",
        cluster__names="from cluster import Keys\n",   # Keys lives in cluster/__init__: a circle
    ))
    assert len(problems) == 1 and problems[0].startswith(
        "import circle through cluster, cluster.keys, cluster.names: ")


# ---------------------------------------------------------------- the real tree

def test_product_imports_run_one_way_and_never_in_a_circle():
    sources = read_tree()
    assert {m.split(".")[0] for m in sources} == set(PRODUCT), "a product package has no module"
    problems = check(sources)
    assert not problems, "\n".join(problems)
