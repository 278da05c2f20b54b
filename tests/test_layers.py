"""The import layering: each package of the suite is one floor, and imports go down (or stay on their floor).

The floors, bottom up, follow the data: the batch-spec grammar; what a result is (the typed record, the outcome, the
files); what a study and a case are (backends, shapes, options, sweeps, the study, the case, its workload and work
model); what measures (adapters, timer, clocks, verification, the runner); the reporting; the pytest glue; the
Python API. A module that is on no floor, an import that goes up, or an import cycle fails here, naming it.

Imports inside ``if TYPE_CHECKING:`` are type hints, not dependencies, and are not counted. The adapter contract
loads the adapters by module name at run time (``contract.py``: a backend's adapter is imported only when a case
of it runs); that is the one way up, and it goes through ``importlib``, not an import statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grammar", ("grammar",)),
    ("results", ("attnbench.results",)),
    ("study and case", ("attnbench.spec",)),
    ("measurement", ("attnbench.measure",)),
    ("reporting", ("attnbench.reporting",)),
    ("pytest", ("attnbench.pytest_plugin",)),
    ("api", ("attnbench.api",)),
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*(REPO / "attnbench").rglob("*.py"), *(REPO / "grammar").rglob("*.py")]:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def floor_of(module: str) -> int | None:
    for level, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(module: str, *, top_level_only: bool = False) -> set[str]:
    """The suite's modules that ``module`` imports (anywhere in it, or at its top level only)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    nodes = tree.body if top_level_only else [n for n in ast.walk(tree) if id(n) not in skipped]
    out: set[str] = set()
    for node in nodes:
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in MODULES and n != module}
    return out


def test_every_module_is_on_one_floor():
    assert [m for m in MODULES if floor_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    here = floor_of(module)
    up = sorted(f"{dep} ({FLOORS[floor_of(dep)][0]})" for dep in imports_of(module)
                if floor_of(dep) is not None and floor_of(dep) > here)
    assert not up, f"{module} ({FLOORS[here][0]}) imports a floor above it: {', '.join(up)}"


def test_no_import_cycle():
    graph = {m: imports_of(m, top_level_only=True) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule is not vacuous: a results module importing the runner is caught."""
    fake = tmp_path / "record.py"
    fake.write_text("from attnbench.measure.runner import execute\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "attnbench.results.record", fake)
    with pytest.raises(AssertionError, match=r"attnbench.results.record \(results\) imports a floor above it: "
                                             r"attnbench.measure.runner \(measurement\)"):
        test_imports_go_down("attnbench.results.record")
