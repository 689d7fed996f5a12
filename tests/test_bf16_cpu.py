"""bf16-mixed on the CPU: the mixed-precision training path runs before any GPU does."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from helpers.entry_runs import TINY, run_entry

pytestmark = pytest.mark.e2e  # each test here starts train.py, eval.py, an app or another process


def test_bf16_mixed_trains_on_cpu(tmp_path, data_dir):
    run = tmp_path / "bf16"
    # two epochs: a warm-up epoch and one with the GMM and prototype passes under autocast
    run_entry("train.py", ["experiment=synthetic", *TINY, f"paths.data_dir={data_dir}",
                           f"hydra.run.dir={run}", "trainer.precision=bf16-mixed",
                           "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                           "test_after_training=false"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values()
               if torch.is_tensor(v) and v.is_floating_point())
    with open(run / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    epoch_losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) >= 6 and len(epoch_losses) == 2  # 3 steps per epoch, 2 epochs
    assert all(math.isfinite(v) and v > 0 for v in losses + epoch_losses)
    # the second epoch ran the stage-I losses (with the passes' confidences and prototypes)
    assert any(r.get("train/tri_epoch") for r in rows)
