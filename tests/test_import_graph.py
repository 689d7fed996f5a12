"""The package's import graph (issue 14): layers import downwards only and nothing forms a cycle.

Imports are read with ``ast`` from every module of ``tskd/``, function-level (lazy) imports
included, so a lazy import cannot hide a cycle or a layer violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tskd

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tskd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (``from a import b``: ``a.b``
    when that is a module, else ``a``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) for name, path in modules.items()}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read_from_every_module():
    graph = _graph()
    assert {"tskd.data.registry", "tskd.metrics.search", "tskd.features.protocol", "tskd.runner.metrics_file",
            "tskd.runner.run", "tskd.apps.visualize"} <= set(graph)
    assert "tskd.data.registry" in graph["tskd.data.datamodule"]
    assert "tskd.metrics.search" in graph["tskd.metrics.retrieval"]
    assert "tskd.metrics.retrieval" in graph["tskd.models.protocol_evaluation"]


def test_layers_import_downwards_only():
    graph = _graph()
    rules = {"tskd.data": ("tskd.models", "tskd.losses", "tskd.metrics", "tskd.evaluation",
                           "tskd.runner.run"),
             "tskd.metrics": ("tskd.models", "tskd.evaluation", "tskd.runner.run"),
             # labels, draws, diagnostics: below the data layer, which reads them
             "tskd.supervision": ("tskd.data", "tskd.models", "tskd.metrics", "tskd.evaluation",
                                  "tskd.runner.run")}
    bad = [(m, i) for m, imports in graph.items() for layer, banned in rules.items()
           if _under(m, layer) for i in imports if any(_under(i, b) for b in banned)]
    assert bad == []


def test_no_module_imports_the_entry_points():
    graph = _graph()
    assert [(m, i) for m, imports in graph.items() for i in imports
            if i in ("train", "eval") or i.startswith(("train.", "eval."))] == []


def test_no_import_cycle_among_tskd_modules():
    graph = {m: {i for i in imports if i in _modules()} for m, imports in _graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(graph[m]):
            if state.get(i) == 1:
                cycles.append(path[path.index(i):] + [i])
            elif i not in state:
                visit(i, path + [i])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_training_system_is_fed_its_data_explicitly():
    """The module and its passes get loaders and protocol as arguments (tskd.runner.run wires them)."""
    package = Path(tskd.__file__).parent
    reaching = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
                if "trainer.datamodule" in p.read_text()]
    assert reaching == []
