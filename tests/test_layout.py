"""House rules over the source tree (issue 12): short functions, package code free of entry scripts, no circles."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = {"train", "val", "detect", "export", "benchmarks", "hubconf"}
MAX_FUNCTION_LINES = 100


def _sources() -> dict[str, ast.Module]:
    """Module name -> parsed source for every package module and entry script (tests and runs/ excluded)."""
    out = {}
    for p in sorted(REPO.rglob("*.py")):
        rel = p.relative_to(REPO)
        if rel.parts[0] in ("tests", "runs") or any(part.startswith(".") for part in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(p.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.Module, module_level_only: bool) -> set[str]:
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from utils import errors
    return names


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[tuple[int, str]]:
    """(lines, 'module:function') for every function longer than ``limit`` lines, longest first."""
    rows = [
        (node.end_lineno - node.lineno + 1, f"{name}:{node.name}")
        for name, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    return sorted((r for r in rows if r[0] > limit), reverse=True)


def test_the_checker_measures_lines():
    tree = ast.parse("def f():\n    a = 1\n\n    return a\n")
    (fn,) = tree.body
    assert fn.end_lineno - fn.lineno + 1 == 4


def test_no_function_over_100_lines():
    assert long_functions() == []


def test_package_code_imports_no_entry_script():
    offenders = {
        name: sorted(_imports(tree, module_level_only=False) & ENTRY_SCRIPTS)
        for name, tree in _sources().items()
        if name.split(".")[0] in ("utils", "models")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles of ``graph`` (module -> modules it imports), each as a path ending where it started."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := cycle_from(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    return [c for name in sorted(graph) if name not in state and (c := cycle_from(name, [name]))]


def test_find_cycles_known_answer():
    circle = {
        "utils.options": {"utils.checkpoints"},
        "utils.checkpoints": {"utils.prune"},
        "utils.prune": {"utils.options"},
    }
    assert find_cycles(circle) == [["utils.checkpoints", "utils.prune", "utils.options", "utils.checkpoints"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_level_import_circle():
    sources = _sources()
    graph = {
        name: {m for m in _imports(tree, module_level_only=True) if m in sources} for name, tree in sources.items()
    }
    assert find_cycles(graph) == []
