"""The package's layers (docs/architecture.md): no import circle, and each layer imports only the
layers below it.

Imports are read from the source with `ast`, including those inside functions (a lazy import
still ties two modules together) and excluding `if TYPE_CHECKING:` blocks (annotations only).
Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too, so those count as imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "budgetlm"

# Rank of each top-level module or package: an import may only go to an equal or lower rank.
# Equal ranks are siblings that may use each other as long as no circle forms.
RANKS = {
    "budgetlm": 0,  # the package root: its version
    "errors": 0,
    "registry": 0,
    "api": 0,
    "models": 1,
    "data": 1,
    "schedules": 1,
    "budget": 2,
    "config": 3,
    "optim": 4,
    "methods": 5,
    "train": 6,
    "interop": 7,
    "finetune": 7,
    "conformance": 7,
    "compare": 8,
    "config_docs": 9,
    "cli": 9,
    "__main__": 10,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def _imported_names(tree: ast.AST) -> list[str]:
    skipped = _type_checking_nodes(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.split(".")[0] == "budgetlm"]


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (with the packages those sit in)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name in _imported_names(ast.parse(path.read_text())):
            while name and name not in modules:  # `from pkg.mod import function`
                name = name.rpartition(".")[0]
            while name and name != "budgetlm":
                if name != module and not module.startswith(name + "."):
                    graph[module].add(name)
                name = name.rpartition(".")[0]
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "budgetlm"


def test_no_import_circle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_every_top_level_module_has_a_layer() -> None:
    unranked = sorted({_top(m) for m in _modules()} - set(RANKS))
    assert not unranked, f"add these to RANKS (and docs/architecture.md): {unranked}"


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{a} imports {b}"
        for a, targets in sorted(import_graph().items())
        for b in sorted(targets)
        if RANKS.get(_top(b), 0) > RANKS.get(_top(a), 0)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_compare_report_is_above_running_and_analysis() -> None:
    """The report reads what the grid wrote; nothing that runs or analyses imports it."""
    wrong = [
        f"{a} imports {b}"
        for a, targets in sorted(import_graph().items())
        for b in targets
        if b.startswith("budgetlm.compare.report")
        and not a.startswith(("budgetlm.compare.report", "budgetlm.cli"))
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"c"}}, [["a", "b"]]),
    ],
)
def test_cycle_finder_finds_planted_cycles(graph, expected) -> None:
    assert find_cycles(graph) == expected


def test_lazy_and_parent_imports_count(tmp_path, monkeypatch) -> None:
    """A function-level import and the package __init__ it runs are edges; TYPE_CHECKING is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from budgetlm.cli import main\n"
        "def f():\n    from budgetlm.train.session import open_run\n"
    )
    names = _imported_names(ast.parse(source))
    assert names == ["budgetlm.train.session.open_run"]
