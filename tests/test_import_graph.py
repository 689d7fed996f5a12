"""The package's import graph (issues 14, 19): floors import downwards only, nothing forms a cycle.

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


# The floors of issue 19, lowest first: a module imports its own floor and those below, never
# one above. The runner and the apps share the top floor and never import each other.
CORE = ("tskd.core",)
LAYERS = ("tskd.data", "tskd.losses", "tskd.metrics", "tskd.models", "tskd.supervision",
          "tskd.features", "tskd.config")
CHECKPOINTS = ("tskd.checkpoints",)
RUNNER, APPS = ("tskd.runner",), ("tskd.apps",)
# Embedder.from_checkpoint reads a checkpoint: this one module of the features room stands on
# the checkpoints floor (nothing below it may import it), the rest of the room is a layer.
ON_THE_CHECKPOINTS_FLOOR = ("tskd.features.images",)


def _crossings(sources: tuple[str, ...], banned: tuple[str, ...], graph=None,
               exempt: tuple[str, ...] = ()) -> list:
    """(module, import) pairs where a module under ``sources`` (not under ``exempt``) imports
    one under ``banned``."""
    graph = _graph() if graph is None else graph
    return [(m, i) for m, imports in sorted(graph.items())
            if any(_under(m, s) for s in sources) and not any(_under(m, e) for e in exempt)
            for i in sorted(imports) if any(_under(i, b) for b in banned)]


def test_the_graph_is_read_from_every_module():
    graph = _graph()
    assert {"tskd.data.registry", "tskd.metrics.search", "tskd.features.protocol",
            "tskd.runner.metrics_file", "tskd.runner.run", "tskd.apps.visualize",
            "tskd.checkpoints.eval_data"} <= set(graph)
    assert "tskd.data.registry" in graph["tskd.data.datamodule"]
    assert "tskd.metrics.search" in graph["tskd.metrics.retrieval"]
    assert "tskd.metrics.retrieval" in graph["tskd.models.protocol_evaluation"]
    # the policies an app needs come from the checkpoints room (a lazy import counts too)
    assert "tskd.checkpoints.eval_data" in graph["tskd.apps.visualize"]


def test_the_package_top_level_holds_only_the_rooms():
    """``ls tskd/`` shows the floors: a new flat module (or a stray file) fails here."""
    rooms = {"core", "data", "losses", "metrics", "models", "supervision", "features",
             "checkpoints", "runner", "apps"}
    found = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert found == {"__init__.py", "config.py"} | rooms
    assert all((PACKAGE / r / "__init__.py").is_file() for r in rooms)


def test_core_imports_nothing_else_of_tskd():
    graph = _graph()
    bad = [(m, i) for m, imports in sorted(graph.items()) if _under(m, "tskd.core")
           for i in sorted(imports) if _under(i, "tskd") and not _under(i, "tskd.core")]
    assert bad == []


def test_layers_never_import_checkpoints_runner_or_apps():
    assert _crossings(LAYERS, CHECKPOINTS + RUNNER + APPS + ON_THE_CHECKPOINTS_FLOOR,
                      exempt=ON_THE_CHECKPOINTS_FLOOR) == []


def test_the_checkpoint_floor_never_imports_runner_or_apps():
    assert _crossings(CHECKPOINTS + ON_THE_CHECKPOINTS_FLOOR, RUNNER + APPS) == []


def test_runner_and_apps_never_import_each_other():
    assert _crossings(RUNNER, APPS) == []
    assert _crossings(APPS, RUNNER) == []


def test_the_floor_rules_catch_an_upward_import():
    """The rules are not vacuous: a made-up graph with each forbidden arrow is caught."""
    fake = {"tskd.core.files": {"tskd.config"}, "tskd.models.x": {"tskd.checkpoints.loading"},
            "tskd.features.protocol": {"tskd.features.images"},
            "tskd.checkpoints.resume": {"tskd.runner.run"},
            "tskd.runner.run": {"tskd.apps.report"}, "tskd.apps.embed": {"tskd.runner.trainer"}}
    assert _crossings(LAYERS, CHECKPOINTS + RUNNER + APPS + ON_THE_CHECKPOINTS_FLOOR, fake,
                      exempt=ON_THE_CHECKPOINTS_FLOOR) == [
        ("tskd.features.protocol", "tskd.features.images"),
        ("tskd.models.x", "tskd.checkpoints.loading")]
    assert _crossings(CHECKPOINTS, RUNNER + APPS, fake) == [
        ("tskd.checkpoints.resume", "tskd.runner.run")]
    assert _crossings(RUNNER, APPS, fake) == [("tskd.runner.run", "tskd.apps.report")]
    assert _crossings(APPS, RUNNER, fake) == [("tskd.apps.embed", "tskd.runner.trainer")]
    assert _crossings(CORE, LAYERS, fake) == [("tskd.core.files", "tskd.config")]


def test_layers_import_downwards_only():
    graph = _graph()
    rules = {"tskd.data": ("tskd.models", "tskd.losses", "tskd.metrics", "tskd.features"),
             "tskd.metrics": ("tskd.models", "tskd.features"),
             # labels, draws, diagnostics: below the data layer, which reads them
             "tskd.supervision": ("tskd.data", "tskd.models", "tskd.metrics", "tskd.features")}
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
    """The module and its passes get loaders and protocol as arguments (tskd.runner.run wires
    them)."""
    package = Path(tskd.__file__).parent
    reaching = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
                if "trainer.datamodule" in p.read_text()]
    assert reaching == []
