"""The two no-grad passes TSKD makes around each post-warm-up epoch (docs/method.md).

- **Confidence pass** (start of the epoch): per-sample cross-entropy of every training image,
  which :mod:`tskd.losses.confidence` turns into GMM confidences.
  ``gmm_pass="train"`` (default, the authors' code): batches of P*K visible images (both
  augmented views) and P*K infrared images go through the two-stream network together, in train
  mode (BatchNorm normalises with the batch's statistics), giving three loss vectors: view 1,
  view 2, infrared. ``gmm_pass="eval"``: one eval-mode pass per modality over un-augmented images,
  one loss per visible image shared by both views.
- **Prototype pass** (end of the epoch): the epoch's sampled slots again (same indices, fresh
  augmentation draws), train mode, features weighted by their confidences and summed per
  (identity, slot) into a :class:`~tskd.losses.PrototypeBank`.

Both passes call the plain network (never the DDP wrapper), so DDP neither broadcasts buffers
nor synchronises anything during them. Each rank handles its own share of whole batches; the
per-image losses and the prototype sums are then summed across ranks by the caller, so every
rank ends with the values one process makes over the same batches.

The two passes are Lightning callbacks, :class:`ConfidencePass` and :class:`PrototypePass`,
given their loaders explicitly (anything with the :class:`EpochPassLoaders` methods, e.g.
:class:`~tskd.data.datamodule.ReIDDataModule`); :func:`epoch_pass_callbacks` builds both. The
module keeps the state they fill (confidence buffers, prototype bank) and checks at the start of
training that the callbacks its loss settings need are present.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import pytorch_lightning as pl
import torch
from torch import nn

from tskd.data.protocol import INFRARED, VISIBLE
from tskd.losses import PrototypeBank, gmm_confidence, per_sample_ce, visible_view_confidences

log = logging.getLogger(__name__)

GMM_PASSES = ("train", "eval")
# Stages with CE only: no confidences, no prototypes (weak pre-training, the CE warm-up).
CE_ONLY_STAGES = ("pretrain", "warmup")

ForwardContext = Callable[[], contextlib.AbstractContextManager]


@contextlib.contextmanager
def network_mode(net: nn.Module, train: bool):
    """Run the body with ``net`` in train or eval mode, then restore its mode."""
    was_training = net.training
    net.train(train)
    try:
        yield
    finally:
        net.train(was_training)


@torch.no_grad()
def augmented_losses(
    net: nn.Module,
    batches: Iterable,
    num_visible: int,
    num_infrared: int,
    forward_context: ForwardContext = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image CE of the augmented training views, network in train mode (``gmm_pass=train``).

    Args:
        net: The :class:`~tskd.models.components.TwoStreamNet`.
        batches: Items ``(v1, v2, ir, vis_labels, ir_labels, vis_rows, ir_rows)`` as served by
            the datamodule's confidence loader: (Bv, 3, H, W) twice, (Bi, 3, H, W), then (Bv,)
            and (Bi,) integer tensors.
        num_visible: Number of visible training images (length of the view vectors).
        num_infrared: Number of infrared training images.
        forward_context: The precision plugin's forward context (autocast under bf16).

    Returns:
        ``(view1, view2, infrared)`` float32 loss vectors on the network's device, zero at the
        rows this process did not see (so a cross-rank sum assembles the full vectors).
    """
    device = next(net.parameters()).device
    out = [torch.zeros(n, device=device) for n in (num_visible, num_visible, num_infrared)]
    with network_mode(net, train=True):
        for v1, v2, ir, vis_y, ir_y, vis_rows, ir_rows in batches:
            bv = v1.shape[0]
            x_vis = torch.cat([v1, v2]).to(device)
            with forward_context():
                _, logits = net.forward_train(x_vis, ir.to(device))  # (2Bv + Bi, classes)
            labels = torch.cat([vis_y, vis_y, ir_y]).to(device)
            ce = per_sample_ce(logits.float(), labels)
            vis_rows, ir_rows = vis_rows.to(device), ir_rows.to(device)
            out[0][vis_rows] = ce[:bv]
            out[1][vis_rows] = ce[bv:2 * bv]
            out[2][ir_rows] = ce[2 * bv:]
    return out[0], out[1], out[2]


@torch.no_grad()
def plain_losses(
    net: nn.Module,
    loaders: dict[int, Iterable],
    num_visible: int,
    num_infrared: int,
    forward_context: ForwardContext = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image CE of un-augmented images, network in eval mode (``gmm_pass=eval``).

    Args:
        loaders: ``{VISIBLE: ..., INFRARED: ...}`` yielding ``(x, labels, rows)`` batches.

    Returns:
        ``(visible, infrared)`` float32 loss vectors, zero at rows this process did not see.
    """
    device = next(net.parameters()).device
    out = {VISIBLE: torch.zeros(num_visible, device=device),
           INFRARED: torch.zeros(num_infrared, device=device)}
    with network_mode(net, train=False):  # BatchNorm running statistics stay untouched
        for modality, loader in loaders.items():
            for x, y, rows in loader:
                with forward_context():
                    logits = net.classify(x.to(device), modality)
                out[modality][rows.to(device)] = per_sample_ce(logits.float(), y.to(device))
    return out[VISIBLE], out[INFRARED]


def view_slots(batch_size: int, device: torch.device) -> torch.Tensor:
    """(3B,) slot of each row of a [view1; view2; infrared] batch: 0, 1, 2 (the bank's slots)."""
    return torch.arange(3, device=device).repeat_interleave(batch_size)


def view_confidences(confidences: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     vis_idx: torch.Tensor, ir_idx: torch.Tensor) -> torch.Tensor:
    """(3B,) confidence of each row of a [view1; view2; infrared] batch of these images."""
    conf1, conf2, conf_ir = confidences
    return torch.cat([conf1[vis_idx], conf2[vis_idx], conf_ir[ir_idx]])


@torch.no_grad()
def accumulate_prototypes(
    net: nn.Module,
    batches: Iterable,
    bank: PrototypeBank,
    confidences: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    forward_context: ForwardContext = contextlib.nullcontext,
) -> None:
    """Adds the confidence-weighted features of the given training slots to ``bank``'s sums.

    Args:
        net: The two-stream network (run in train mode, as the authors' code does).
        batches: Training batches ``(v1, v2, ir, labels, vis_idx, ir_idx)`` of the epoch's
            slots, with fresh augmentation draws.
        bank: The prototype bank whose running sums receive the features.
        confidences: Per-image confidences ``(view1, view2, infrared)``.
        forward_context: The precision plugin's forward context.
    """
    device = next(net.parameters()).device
    with network_mode(net, train=True):
        for v1, v2, ir, labels, vis_idx, ir_idx in batches:
            b = labels.shape[0]
            with forward_context():
                f, _ = net.forward_train(torch.cat([v1, v2]).to(device), ir.to(device))
            vis_idx, ir_idx = vis_idx.to(device), ir_idx.to(device)
            w = view_confidences(confidences, vis_idx, ir_idx)
            slots = view_slots(b, device)
            bank.accumulate(f.float(), labels.to(device).repeat(3), slots, w)


# ------------------------------------------------------------------------------ callbacks
class EpochPassLoaders(Protocol):
    """Where the passes' batches come from (:class:`~tskd.data.datamodule.ReIDDataModule`)."""

    def augmented_confidence_dataloader(self, epoch: int) -> Iterable: ...

    def confidence_dataloader(self, modality: int) -> Iterable: ...

    def prototype_dataloader(self, epoch: int, num_batches: int) -> Iterable: ...


def sum_over_ranks(trainer: pl.Trainer | None, t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the DDP ranks (itself on one process or without a trainer)."""
    if trainer is None or trainer.world_size == 1:
        return t
    return trainer.strategy.reduce(t, reduce_op="sum")


def needs_confidence_pass(loss: dict) -> bool:
    """Whether the loss settings read GMM confidences (``loss.soft_identity``)."""
    return bool(loss["soft_identity"])


def needs_prototype_pass(loss: dict) -> bool:
    """Whether the settings build prototypes in a pass (with ``sm_w = 0`` nothing reads them)."""
    return bool(loss["prototype_pass"]) and loss["sm_w"] > 0


def _log_pass_time(module: pl.LightningModule, name: str, start: float) -> None:
    """What a pass cost (seconds, this rank), so its share of an epoch is visible in the logs."""
    seconds = time.perf_counter() - start
    log.info("epoch %d: %s pass %.1f s", module.current_epoch, name, seconds)
    module.log(f"time/{name}_pass_s", seconds, rank_zero_only=True)


class _EpochPass(pl.Callback):
    """A per-epoch pass over batches from ``loaders`` (an :class:`EpochPassLoaders`)."""

    def __init__(self, loaders: EpochPassLoaders) -> None:
        self.loaders = loaders


class ConfidencePass(_EpochPass):
    """At the start of each post-warm-up epoch: per-image CE of every view -> GMM confidences.

    Writes them into the module with ``set_confidences``; ``loss.gmm_pass`` chooses the pass
    (module docstring). Runs before the module's own ``on_train_epoch_start`` (Lightning calls
    callbacks first). The per-image losses of the last pass stay in ``last_losses``
    ``(view1, view2, infrared)`` for the supervision diagnostics and their figure.
    """

    last_losses: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if module.stage in CE_ONLY_STAGES or not needs_confidence_pass(module.loss_cfg):
            return
        start = time.perf_counter()
        module.set_confidences(*self.confidences(trainer, module))
        _log_pass_time(module, "confidence", start)

    def confidences(self, trainer: pl.Trainer, module: pl.LightningModule
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(view1, view2, infrared)`` confidences of every training image (all ranks')."""
        gmm = dict(module.loss_cfg["gmm"])
        n_vis, n_ir = len(module.conf_view1), len(module.conf_infrared)
        context = trainer.precision_plugin.forward_context
        if module.loss_cfg["gmm_pass"] == "train":
            batches = self.loaders.augmented_confidence_dataloader(module.current_epoch)
            losses = augmented_losses(module.net, batches, n_vis, n_ir, context)
            # each image was seen by exactly one rank: a sum assembles the full vectors
            l1, l2, l_ir = (sum_over_ranks(trainer, t) for t in losses)
            self.last_losses = (l1, l2, l_ir)
            w1, w2 = visible_view_confidences(l1, l2, **gmm)
        else:
            loaders = {VISIBLE: self.loaders.confidence_dataloader(VISIBLE),
                       INFRARED: self.loaders.confidence_dataloader(INFRARED)}
            l_vis, l_ir = (sum_over_ranks(trainer, t)
                           for t in plain_losses(module.net, loaders, n_vis, n_ir, context))
            self.last_losses = (l_vis, l_vis, l_ir)
            w1 = w2 = gmm_confidence(l_vis, **gmm)
        return w1, w2, gmm_confidence(l_ir, **gmm)


class PrototypePass(_EpochPass):
    """At the end of each post-warm-up epoch: the epoch's slots again -> the bank's sums.

    Runs before the module's ``on_train_epoch_end``, which turns the sums into prototypes (and
    before ModelCheckpoint, which Lightning calls after the module). Does nothing with
    ``loss.prototype_pass=false`` (the training step accumulates) or ``sm_w = 0``.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if module.stage in CE_ONLY_STAGES or not needs_prototype_pass(module.loss_cfg):
            return
        start = time.perf_counter()
        batches = self.loaders.prototype_dataloader(module.current_epoch,
                                                    int(trainer.num_training_batches))
        accumulate_prototypes(module.net, batches, module.bank, module.confidences,
                              trainer.precision_plugin.forward_context)
        _log_pass_time(module, "prototype", start)


def epoch_pass_callbacks(loaders: EpochPassLoaders) -> list[pl.Callback]:
    """Both per-epoch passes over ``loaders``, ready for ``Trainer(callbacks=...)``."""
    return [ConfidencePass(loaders), PrototypePass(loaders)]
