"""A callback for the supervision tests: replaces the ground truth before training starts.

Training must never read the true labels (only the diagnostics may). This callback swaps the
datamodule's ``labels.truth`` for shuffled labels at ``on_train_start``: after the draw was
made and written to the run dir (which read the truth, as they must), before the first step and
the first per-epoch pass. A run with it must train exactly like one without (same weights, same
pseudo-labels), while its diagnostics, which do read the truth, change.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl

from tskd.supervision.labels import Truth


class TruthPoison(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        labels = trainer.datamodule.labels
        rng = np.random.default_rng(123)
        labels.truth = Truth(rng.permutation(labels.truth.visible),
                             rng.permutation(labels.truth.infrared))
