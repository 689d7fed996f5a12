"""Running the project's entry points in a fresh interpreter, as a user types them.

``run_entry`` starts ``train.py``, ``eval.py``, a benchmark or ``-m <module>`` and fails with the
tail of its output; ``TINY`` are the overrides that make such a training run take seconds on a
CPU. Every test that uses ``run_entry`` starts a process, so it carries the ``e2e`` marker
(``tests/test_test_layout.py`` checks that).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

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
