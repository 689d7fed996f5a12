"""A callback for the DDP test: saves the weights each per-epoch pass of the module used.

Lightning calls a callback's epoch hooks before the LightningModule's, so at
``on_train_epoch_start`` the network holds the weights the confidence pass is about to use, and
at ``on_train_epoch_end`` the weights of the prototype pass. Rank 0 writes them (all ranks hold
the same weights under DDP).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class PassProbe(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def _save(self, trainer: pl.Trainer, module: pl.LightningModule, name: str) -> None:
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}
            torch.save(state, self.out / f"{name}_epoch{trainer.current_epoch}.pt")

    def on_train_epoch_start(self, trainer, module) -> None:
        self._save(trainer, module, "before_confidence_pass")

    def on_train_epoch_end(self, trainer, module) -> None:
        self._save(trainer, module, "before_prototype_pass")
