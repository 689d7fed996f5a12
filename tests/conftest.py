"""Shared fixtures: the repository root and one synthetic dataset per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small, fast settings used by every end-to-end run (CPU, tiny images, a few batches).
TINY = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    "dataset.img_h=64",
    "dataset.img_w=32",
    "data.num_workers=0",
    "data.num_ids=4",
    "data.num_pos=2",
    "data.test_batch_size=64",
    "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "loss.ce_only_epochs=1",
    "loss.md_start=2",
    "logger=csv",
]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder shared by the session's end-to-end runs (synthetic sets made on demand)."""
    return tmp_path_factory.mktemp("data")


def run_entry(script: str, args: list[str], cwd: Path | None = None, env: dict | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Run train.py / eval.py / a module in a fresh interpreter, failing with its output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, *(["-m", script[3:]] if script.startswith("-m ") else [script]), *args]
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, data root) of :mod:`tiny_model`, shared by the inference, export and
    visualiser tests (built once per session instead of once per module)."""
    from tiny_model import make_checkpoint, make_data

    base = tmp_path_factory.mktemp("tiny")
    root = make_data(base / "sysu")
    return make_checkpoint(base / "tiny.ckpt", root), root
