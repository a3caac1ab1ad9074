"""The import graph of es_repro has no cycles, module by module and package by package (every module collapsed to
its first-level package: es_repro.engines.hf.backend -> es_repro.engines), counting imports inside functions too (a
local import that closes a cycle is still a cycle: it only moves the failure to run time); es/ (the algorithm)
imports nothing of the layers above it. An AST scan, no imports executed. The layers: docs/layout.md."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "es_repro"


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """es_repro modules a file imports (``from es_repro.x import y`` counts es_repro.x.y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found.update(subs or {node.module})
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_scan_sees_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def module_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def first_level(module: str) -> str:
    """es_repro.engines.hf.backend -> es_repro.engines; es_repro.cli -> es_repro.cli; es_repro -> es_repro."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        out.setdefault(first_level(name), set()).update(first_level(t) for t in targets)
    return {name: targets - {name} for name, targets in out.items()}


# What the algorithm must not know about: it is pure ask/tell/noise/rules, below every engine and the run.
ABOVE_THE_ALGORITHM = ("engines", "run", "tasks", "baselines", "bench", "probe", "train", "cli")


def test_the_package_scan_sees_a_cycle_through_subpackages():
    graph = {"es_repro.a.x": {"es_repro.b.y"}, "es_repro.b.y": set(), "es_repro.b.z": {"es_repro.a"}, "es_repro.a": set()}
    assert find_cycle(graph) is None  # no module cycle ...
    assert find_cycle(package_graph(graph)) == ["es_repro.a", "es_repro.b", "es_repro.a"]  # ... but a package cycle


def test_es_repro_has_no_package_import_cycles():
    packages = package_graph(module_graph())
    assert {"es_repro.engines", "es_repro.es", "es_repro.run", "es_repro.train", "es_repro.util"} <= packages.keys()
    assert "es_repro.es" in packages["es_repro.engines"]  # the collapse keeps the edges of nested modules
    assert find_cycle(packages) is None, " -> ".join(find_cycle(packages))


def test_the_algorithm_imports_nothing_above_it():
    graph = module_graph()
    leaks = sorted(f"{name} -> {t}" for name, targets in graph.items() if name.startswith("es_repro.es.")
                   for t in targets if t.split(".")[1] in ABOVE_THE_ALGORITHM)
    assert any(name.startswith("es_repro.es.") for name in graph)
    assert not leaks, leaks


def test_util_is_a_leaf():
    graph = module_graph()
    leaks = sorted(f"{n} -> {t}" for n, ts in graph.items() if n.startswith("es_repro.util") for t in ts
                   if not t.startswith("es_repro.util"))
    assert not leaks, leaks


def test_es_repro_has_no_import_cycles():
    graph = module_graph()
    assert {"es_repro.config", "es_repro.train", "es_repro.engines.hf.backend", "es_repro.run.checkpoint"} <= graph.keys()
    assert "es_repro.train" in graph["es_repro.cli"]  # the scan sees function-level imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
