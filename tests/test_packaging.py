"""The package as pip installs it (issue 19): every room is packed, and an installed wheel, not
the repository, finds its YAML configs (tskd.config's defaults, the visualize app's Hydra config).

The wheel is built offline from a copy of the sources (so no build/ or egg-info lands in the
repository), installed with ``pip --target`` into a folder of its own and run from a folder
outside the repository with only that folder on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject():
    """The packages are listed (a find cannot see tskd.configs), so a new room must be added."""
    folders = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "tskd").rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == folders | {"tskd.configs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"tskd.configs": "configs"}


def test_the_console_scripts_name_existing_functions():
    import importlib

    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"tskd-visualize", "tskd-embed", "tskd-export", "tskd-report"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--no-deps", "-q"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path

    import tskd
    from tskd.config import CONFIGS, yaml_values

    target = Path(sys.argv[1]).resolve()
    assert Path(tskd.__file__).resolve().is_relative_to(target), tskd.__file__
    assert CONFIGS.resolve() == target / "tskd" / "configs", CONFIGS
    assert yaml_values("train.yaml", "optim")["lr_backbone"] > 0
    assert sorted(p.name for p in (CONFIGS / "dataset").glob("*.yaml"))[0] == "llcm.yaml"
    print("configs at", CONFIGS)
""")


@pytest.mark.e2e  # pip and python subprocesses
def test_an_installed_wheel_finds_its_own_configs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("tskd", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", ".", "--no-build-isolation", "-w", str(tmp_path / "wheel"), cwd=src)
    (wheel,) = (tmp_path / "wheel").glob("tskd-*.whl")
    target = tmp_path / "installed"
    _pip("install", "--target", str(target), str(wheel), cwd=tmp_path)
    assert sorted(p.name for p in (target / "tskd" / "configs").glob("*.yaml")) == [
        "eval.yaml", "train.yaml", "visualize.yaml"]

    outside = tmp_path / "elsewhere"  # no configs/ and no tskd/ here
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=outside, env=env,
                              capture_output=True, text=True, timeout=300)

    checked = run("-c", CHECK, str(target))
    assert checked.returncode == 0, checked.stderr
    assert str(target / "tskd" / "configs") in checked.stdout
    # the Hydra app composes visualize.yaml (and its eval.yaml defaults) from the package
    composed = run("-m", "tskd.apps.visualize", "--cfg", "job", "ckpt=some.ckpt")
    assert composed.returncode == 0, composed.stderr
    assert "ckpt: some.ckpt" in composed.stdout and "vis:" in composed.stdout
    helped = run("-m", "tskd.apps.report", "--help")
    assert helped.returncode == 0 and "sweep_dir" in helped.stdout, helped.stderr
    # the console scripts pip wrote call the same apps
    scripts = target / "bin"
    assert sorted(p.name for p in scripts.glob("tskd-*")) == [
        "tskd-embed", "tskd-export", "tskd-report", "tskd-visualize"]
    script = subprocess.run([str(scripts / "tskd-report"), "--help"], cwd=outside, env=env,
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0 and "sweep_dir" in script.stdout, script.stderr
