"""A callback for the checkpoint test: makes the weights NaN after one epoch's last step.

The step itself had a finite loss (the NaN is written after the optimiser step), as when an
overflow in the update turns the weights non-finite: the loss check cannot see it, only the
check before the epoch-end save can.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class NaNPoison(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        last = batch_idx == int(trainer.num_training_batches) - 1
        if trainer.current_epoch == self.epoch and last:
            with torch.no_grad():
                for p in module.parameters():
                    p.view(-1)[0] = float("nan")
