"""The README is a front page, and every command in it works as typed.

Every command line of the README's shell blocks is taken from the README text itself (comments
dropped, ``\\`` continuations joined, ``&&`` chains split), and so is every command written as
inline code in its prose (a span starting with python, make, pip or pytest); each must be
covered:

- ``python train.py ...`` / ``python eval.py ...``: composed with Hydra from exactly the words
  typed (a ``-m`` sweep is expanded into its jobs by Hydra's own sweeper) and validated with the
  project's schema (``tskd.config.validate``); every ``key=value`` typed must reach the config.
  Two rules, and only these, change what is composed: an angle-bracket placeholder ``<name>``
  (a value the reader fills in) becomes ``name``, and ``paths.output_dir=<tmp>`` is added,
  because an in-process composition has no Hydra run dir to interpolate.
- ``make <target>``: the target exists in the Makefile.
- anything else: listed in ``OTHER`` below with the test that covers it, which must exist.

A command added to the README without such coverage fails ``test_every_readme_command_is_covered``.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
from helpers.markdown import commands, inline_commands

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 200
ENTRY_POINTS = {"train.py": "train", "eval.py": "eval"}

# Commands that are neither an entry point nor a make target -> the test that covers them.
OTHER = {
    "python3 -m venv .venv": "tests/test_readme.py::test_by_hand_set_up_is_what_make_runs",
    ". .venv/bin/activate": "tests/test_readme.py::test_by_hand_set_up_is_what_make_runs",
    "pip install torch==2.14.1 torchvision==0.29.1":
        "tests/test_readme.py::test_by_hand_set_up_is_what_make_runs",
    'pip install -e ".[dev]"': "tests/test_readme.py::test_by_hand_set_up_is_what_make_runs",
    "pytest": "tests/test_readme.py::test_by_hand_set_up_is_what_make_runs",
}


def _readme_commands() -> list[str]:
    """The shell blocks' commands, then any command written as inline code in the prose."""
    text = README.read_text(encoding="utf-8")
    return commands(text) + inline_commands(text, ("python", "python3", "make", "pip", "pytest"))


def _entry(command: str) -> str | None:
    words = shlex.split(command)
    if len(words) >= 2 and words[0] == "python" and words[1] in ENTRY_POINTS:
        return ENTRY_POINTS[words[1]]
    return None


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.M))


def _test_exists(ref: str) -> bool:
    """Whether ``path::name`` names a test function defined in that file (found by parsing it:
    test modules are never imported by other tests)."""
    path, name = ref.split("::")
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; the manual is docs/"


def test_every_readme_command_is_covered():
    found = _readme_commands()
    assert any(_entry(c) == "train" for c in found) and "make test" in found
    targets = _make_targets()
    uncovered = [c for c in found if _entry(c) is None and c not in OTHER
                 and not (c.startswith("make ") and c.split()[1] in targets)]
    assert not uncovered, f"README commands without a test (add them to OTHER): {uncovered}"
    stale = [c for c in OTHER if c not in found]
    assert not stale, f"OTHER lists commands the README no longer has: {stale}"
    missing = sorted({ref for ref in OTHER.values() if not _test_exists(ref)})
    assert not missing, f"OTHER names tests that do not exist: {missing}"


def _jobs(command: str) -> tuple[str, list[list[str]]]:
    """The config name and the override list of every job ``command`` starts, as Hydra sees it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = shlex.split(command)
    name, args = ENTRY_POINTS[words[1]], words[2:]
    multirun = "-m" in args or "--multirun" in args
    args = [re.sub(r"<(\w+)>", r"\1", a) for a in args if a not in ("-m", "--multirun")]
    if not multirun:
        return name, [args]
    parsed = OverridesParser.create().parse_overrides(args)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return name, batch


@pytest.mark.parametrize("command", [c for c in _readme_commands() if _entry(c)], ids=str)
def test_readme_command_composes_and_validates(command, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from tskd.config import EvalConfig, TrainConfig, validate

    name, jobs = _jobs(command)
    assert jobs, command
    groups = {p.name for p in (REPO / "configs").iterdir() if p.is_dir()}
    for overrides in jobs:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(config_name=name,
                          overrides=[*overrides, f"paths.output_dir={tmp_path}"])
        typed = validate(cfg, TrainConfig if name == "train" else EvalConfig)
        assert typed is not None
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.key_or_group not in groups:  # a value typed on the line reaches the config
                assert OmegaConf.select(cfg, o.key_or_group) == o.value(), (command, o)


def test_by_hand_set_up_is_what_make_runs():
    """The README's set-up by hand runs what ``make demo`` / ``make test`` run (which CI runs)."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^VENV \?= \.venv$", makefile, flags=re.M)
    assert re.search(r"^BIN := \$\(VENV\)/bin$", makefile, flags=re.M)  # what activate puts first
    recipe = {line.strip() for line in makefile.splitlines() if line.startswith("\t")}
    as_make = {  # the by-hand spelling -> the Makefile's spelling of the same step
        "python3 -m venv .venv": "$(PYTHON) -m venv $(VENV)",
        "pytest": "$(BIN)/pytest",
        "python train.py experiment=synthetic": "$(BIN)/python train.py experiment=synthetic",
    }
    found = _readme_commands()
    for command in found:
        if command.startswith("pip install "):
            as_make[command] = command.replace("pip install ", "$(BIN)/python -m pip install -q ")
    assert {c for c in found if c.startswith("pip install ")}, "no pip install in the README"
    for command, spelled in as_make.items():
        assert command in found, command
        assert spelled in recipe, f"README says {command!r}, the Makefile has no {spelled!r}"
    assert re.search(r"^PYTHON \?= python3$", makefile, flags=re.M)
