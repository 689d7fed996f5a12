"""The test suite's own layout, read with ``ast`` from every ``tests/**/*.py``.

1. No test module imports another test module, a top-level file of ``tests/`` or ``benchmarks/``:
   shared builders live in ``tests/helpers/`` (imported as ``from helpers import x``), so moving
   or deleting one test file never breaks another, and a benchmark may import a test helper but
   a test never depends on a benchmark.
2. Every test that starts another process (``run_entry``, ``subprocess``, ``os.system``, a
   multiprocessing spawn), itself or through a fixture or module function it uses, carries the
   ``e2e`` marker, so ``make test-fast`` (``-m "not e2e"``) stays a fast in-process core.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
HELPERS = TESTS / "helpers"
# Call names that start another process: ``subprocess.<any>``, ``os.system``/``os.spawn*``/
# ``os.exec*``, and the multiprocessing ways in (``mp.spawn``, ``get_context``, ``Process``...).
PROCESS_MODULES = {"subprocess"}
PROCESS_CALLS = {"spawn", "start_processes", "get_context", "Process", "Pool", "system",
                 "Popen", "ProcessPoolExecutor", "run_entry"}


def _sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in sorted(TESTS.rglob("*.py"))}


def local_module_names(files) -> set[str]:
    """Names a test could import from the test tree other than ``helpers`` (pytest puts each
    test folder on sys.path): every module and folder outside ``tests/helpers/``."""
    names = set()
    for p in files:
        if HELPERS in p.parents:
            continue
        names.add(p.stem)
        names.update(d.name for d in p.relative_to(TESTS).parents if d.name)
    return names - {"__init__"}


def forbidden_imports(tree: ast.Module, local: set[str]) -> list[str]:
    """``module: line`` of each import of a test-tree module (not ``helpers``) or benchmarks."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        found += [f"{m}: line {node.lineno}" for m in mods
                  if m.split(".")[0] in local | {"benchmarks"}]
    return found


def test_no_test_module_imports_another_test_module_or_a_benchmark():
    trees = _sources()
    local = local_module_names(trees)
    bad = {str(p.relative_to(TESTS)): f for p, t in trees.items()
           if (f := forbidden_imports(t, local))}
    assert not bad, f"move what these share into tests/helpers/ (from helpers import x): {bad}"


def test_the_import_rule_catches_each_kind_of_import():
    local = {"conftest", "test_evaluation", "tiny_model", "metrics"}
    src = ("import os\nfrom helpers import configs\nfrom tskd.metrics import x\n"
           "from conftest import TINY\nimport test_evaluation as t\nfrom tiny_model import M\n"
           "from benchmarks.optimisations import y\nimport benchmarks\n"
           "def f():\n    from metrics.test_retrieval import z\n")
    assert [f.split(":")[0] for f in forbidden_imports(ast.parse(src), local)] == [
        "conftest", "test_evaluation", "tiny_model", "benchmarks.optimisations", "benchmarks",
        "metrics.test_retrieval"]
    files = [TESTS / "conftest.py", TESTS / "metrics" / "test_x.py", HELPERS / "configs.py"]
    assert local_module_names(files) == {"conftest", "metrics", "test_x"}


def _called_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _starts_process(node: ast.AST, launchers: set[str]) -> bool:
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id in PROCESS_MODULES:
            return True
        if _called_name(call) in PROCESS_CALLS | launchers:
            return True
    return False


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Module-level functions and the methods of module-level classes, by name."""
    out = {}
    for node in tree.body:
        body = node.body if isinstance(node, ast.ClassDef) else [node]
        out.update({f.name: f for f in body if isinstance(f, ast.FunctionDef)})
    return out


def _is_fixture(f: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in f.decorator_list)


def _used_fixtures(f: ast.FunctionDef) -> set[str]:
    """Fixture names given to ``@pytest.mark.usefixtures(...)``."""
    return {a.value for d in f.decorator_list if isinstance(d, ast.Call)
            and _called_name(d) == "usefixtures" for a in d.args if isinstance(a, ast.Constant)}


def _marked_e2e(nodes) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "e2e"
               for node in nodes for n in ast.walk(node))


def launching_functions(tree: ast.Module, launchers: set[str],
                        outer_fixtures: set[str] = frozenset()) -> set[str]:
    """Names of the functions of ``tree`` that start a process themselves, through a module
    function they call, or through a fixture they ask for (``outer_fixtures``: conftest's ones
    that do)."""
    funcs = _functions(tree)
    fixtures = {n for n, f in funcs.items() if _is_fixture(f)}
    found = {n for n, f in funcs.items() if _starts_process(f, launchers)}
    while True:  # propagate through calls and fixture arguments until nothing changes
        more = set()
        for name, f in funcs.items():
            called = {_called_name(c) for c in ast.walk(f) if isinstance(c, ast.Call)}
            args = {a.arg for a in f.args.args} | _used_fixtures(f)
            if called & found or args & ((found & fixtures) | set(outer_fixtures)):
                more.add(name)
        if more <= found:
            return found
        found |= more


def unmarked_process_tests(tree: ast.Module, launchers: set[str],
                           outer_fixtures: set[str] = frozenset()) -> list[str]:
    """The ``test_*`` functions that start a process without an ``e2e`` mark (their own, their
    class's or the module's ``pytestmark``)."""
    module_marked = any(isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and _marked_e2e([n.value]) for n in tree.body)
    if module_marked:
        return []
    launching = launching_functions(tree, launchers, outer_fixtures)
    bad = []
    for node in tree.body:
        owner = node.decorator_list if isinstance(node, ast.ClassDef) else []
        body = node.body if isinstance(node, ast.ClassDef) else [node]
        for f in body:
            if isinstance(f, ast.FunctionDef) and f.name.startswith("test") \
                    and f.name in launching and not _marked_e2e([*owner, *f.decorator_list]):
                bad.append(f.name)
    return bad


def _helper_launchers(trees: dict[Path, ast.Module]) -> set[str]:
    """Functions of tests/helpers/ that start a process (``run_entry`` and any wrapper of it)."""
    names: set[str] = set()
    while True:
        more = set().union(*(launching_functions(t, names) for p, t in trees.items()
                             if HELPERS in p.parents))
        if more <= names:
            return names
        names |= more


def test_every_test_that_starts_a_process_is_marked_e2e():
    trees = _sources()
    launchers = _helper_launchers(trees)
    assert "run_entry" in launchers  # the rule sees the shared entry-point runner
    conftests = {p.parent: t for p, t in trees.items() if p.name == "conftest.py"}
    bad = {}
    for p, tree in trees.items():
        if not p.name.startswith("test_"):
            continue
        outer = set()
        for folder, ct in conftests.items():
            if folder == p.parent or folder in p.parents:
                outer |= launching_functions(ct, launchers) & {
                    n for n, f in _functions(ct).items() if _is_fixture(f)}
        if found := unmarked_process_tests(tree, launchers, outer):
            bad[str(p.relative_to(TESTS))] = found
    assert not bad, ("these tests start a process: mark them @pytest.mark.e2e (or the module "
                     f"with pytestmark = pytest.mark.e2e) so make test-fast leaves them out: {bad}")


@pytest.mark.parametrize("body, marked", [
    pytest.param("def test_a(tmp_path):\n    subprocess.run(['x'])\n", False, id="subprocess"),
    pytest.param("def test_a():\n    run_entry('train.py', [])\n", False, id="run_entry"),
    pytest.param("def test_a():\n    mp.spawn(w, nprocs=2)\n", False, id="spawn"),
    pytest.param("def test_a():\n    wrap_run()\n", False, id="helpers-launcher"),
    pytest.param("def _go():\n    return os.system('x')\n\ndef test_a():\n    _go()\n", False,
                 id="module-function"),
    pytest.param("@pytest.fixture\ndef run(tmp_path):\n    return subprocess.Popen(['x'])\n\n"
                 "def test_a(run):\n    assert run\n", False, id="module-fixture"),
    pytest.param("def test_a(trained):\n    assert trained\n", False, id="conftest-fixture"),
    pytest.param("@pytest.mark.usefixtures('trained')\ndef test_a():\n    pass\n", False,
                 id="usefixtures"),
    pytest.param("class TestA:\n    def test_a(self):\n        subprocess.run(['x'])\n", False,
                 id="method"),
    pytest.param("@pytest.mark.e2e\ndef test_a():\n    subprocess.run(['x'])\n", True,
                 id="marked-function"),
    pytest.param("pytestmark = [pytest.mark.e2e]\n\ndef test_a():\n    run_entry('eval.py', [])\n",
                 True, id="marked-module"),
    pytest.param("@pytest.mark.e2e\nclass TestA:\n    def test_a(self):\n"
                 "        subprocess.run(['x'])\n", True, id="marked-class"),
    pytest.param("def test_a():\n    assert sum([1]) == 1\n", True, id="in-process"),
])
def test_the_e2e_rule_follows_calls_and_fixtures(body, marked):
    bad = unmarked_process_tests(ast.parse(body), {"run_entry", "wrap_run"}, {"trained"})
    assert bad == ([] if marked else ["test_a"])


def test_make_test_fast_is_make_tests_selection_without_e2e(pytestconfig):
    """pytest keeps only the last ``-m``: test-fast's must repeat pyproject's addopts one (what
    ``make test`` runs) and add ``not e2e``, or it would run slow/gpu tests or drop others."""
    addopts = pytestconfig.getini("addopts")
    default = addopts[addopts.index("-m") + 1]
    assert default == "not slow and not gpu"
    assert any(m.startswith("e2e:") for m in pytestconfig.getini("markers"))
    recipes = dict(re.findall(r"^([\w-]+):.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M))
    assert recipes["test"] == "$(BIN)/pytest"
    assert recipes["test-fast"] == f'$(BIN)/pytest -m "{default} and not e2e"'
