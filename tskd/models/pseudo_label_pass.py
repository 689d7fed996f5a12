"""Weak supervision's pseudo-labels (paper Eqs. 2-3, Alg. 1): the current network's argmax.

After the pre-training stage and then every ``supervision.refresh_every`` epochs, every
unlabelled training image gets ``argmax C(f(x))`` of the current network: a no-grad pass over
un-augmented images with BatchNorm in train mode, no threshold [code-family]. Labelled images
keep their ground truth. The pass runs at the end of an epoch (the network that would start the
next one), before the checkpoint of that epoch is written, so a resume continues with exactly
these labels; the next epoch's loaders read them (the trainer reloads them every epoch).

Multi-GPU: each rank predicts its stride of the unlabelled rows; the predictions are summed
across ranks (every row was seen by exactly one), so every rank holds the same array.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from tskd.data.protocol import INFRARED, VISIBLE
from tskd.models.epoch_passes import ForwardContext, network_mode, sum_over_ranks

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_labels(net: nn.Module, loaders: dict[int, Iterable], sizes: dict[int, int],
                   forward_context: ForwardContext = contextlib.nullcontext
                   ) -> dict[int, torch.Tensor]:
    """Argmax class of every image the loaders serve, network in train mode.

    Args:
        net: The two-stream network.
        loaders: ``{VISIBLE: ..., INFRARED: ...}`` yielding ``(x, label, rows)`` batches.
        sizes: Training images per modality (length of the returned vectors).
        forward_context: The precision plugin's forward context.

    Returns:
        ``{modality: (N,) int64}`` holding ``prediction + 1`` at the rows this process saw
        and 0 elsewhere, so a cross-rank sum assembles the full vectors (see
        :meth:`PseudoLabelPass.refresh`).
    """
    device = next(net.parameters()).device
    out = {m: torch.zeros(n, dtype=torch.int64, device=device) for m, n in sizes.items()}
    with network_mode(net, train=True):  # BatchNorm in train mode, as the code family does
        for modality, loader in loaders.items():
            for x, _, rows in loader:
                with forward_context():
                    logits = net.classify(x.to(device), modality)
                out[modality][rows.to(device)] = logits.argmax(1) + 1
    return out


class PseudoLabelSource(Protocol):
    """What the pass reads and writes (:class:`~tskd.data.datamodule.ReIDDataModule`)."""

    labels: object  # tskd.supervision.labels.TrainingLabels

    def unlabelled_dataloader(self, modality: int) -> Iterable: ...

    def set_pseudo_labels(self, visible: np.ndarray, infrared: np.ndarray, epoch: int) -> None:
        ...


def require_same_on_ranks(trainer: pl.Trainer | None, name: str, values: np.ndarray) -> None:
    """Refuse to go on when DDP ranks hold different ``values`` (labels every rank must share).

    Raises:
        RuntimeError: Naming ``name``; a different draw on one rank would train it on other
            labels without any other symptom.
    """
    if trainer is None or trainer.world_size == 1:
        return
    local = torch.as_tensor(np.asarray(values), device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(local)  # (world, N)
    if not torch.equal(gathered.amin(0), gathered.amax(0)):
        raise RuntimeError(f"DDP ranks hold different {name}; every rank must train on the same "
                           "labels. Please report this with your trainer and supervision config.")


def refresh_due(next_epoch: int, pretrain_epochs: int, refresh_every: int) -> bool:
    """Whether the labels of ``next_epoch`` are new pseudo-labels (the first main epoch, then
    every ``refresh_every`` epochs)."""
    main = next_epoch - pretrain_epochs
    return main >= 0 and main % refresh_every == 0


class PseudoLabelPass(pl.Callback):
    """Refreshes the datamodule's pseudo-labels (weak supervision; nothing otherwise).

    Args:
        source: The datamodule (labels, unlabelled loaders, ``set_pseudo_labels``).
        refresh_every: ``supervision.refresh_every``.
    """

    def __init__(self, source: PseudoLabelSource, refresh_every: int = 1) -> None:
        self.source, self.refresh_every = source, int(refresh_every)

    def _active(self) -> bool:
        return self.source.labels.mode == "weak"

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # No pre-training: the first epoch needs pseudo-labels already (a resumed run has its
        # own from the checkpoint).
        if self._active() and module.pretrain_epochs == 0 and \
                self.source.labels.pseudo_epoch is None:
            self.refresh(trainer, module, epoch=-1)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._active() and refresh_due(module.current_epoch + 1, module.pretrain_epochs,
                                          self.refresh_every):
            self.refresh(trainer, module, epoch=module.current_epoch)

    def refresh(self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int) -> None:
        """Predict every unlabelled image and hand the labels to the datamodule (all ranks)."""
        start = time.perf_counter()
        labels = self.source.labels
        sizes = {VISIBLE: len(labels.visible), INFRARED: len(labels.infrared)}
        loaders = {m: self.source.unlabelled_dataloader(m) for m in (VISIBLE, INFRARED)}
        context = trainer.precision_plugin.forward_context
        shifted = predict_labels(module.net, loaders, sizes, context)
        full = {m: (sum_over_ranks(trainer, t) - 1).cpu().numpy() for m, t in shifted.items()}
        for m, name in ((VISIBLE, "visible"), (INFRARED, "infrared")):
            require_same_on_ranks(trainer, f"{name} pseudo-labels", full[m])
        self.source.set_pseudo_labels(full[VISIBLE], full[INFRARED], epoch)
        seconds = time.perf_counter() - start
        log.info("epoch %d: pseudo-label pass %.1f s", epoch, seconds)
