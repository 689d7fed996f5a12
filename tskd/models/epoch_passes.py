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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from tskd.data.protocol import INFRARED, VISIBLE
from tskd.losses import PrototypeBank, per_sample_ce

GMM_PASSES = ("train", "eval")

ForwardContext = Callable[[], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _network_mode(net: nn.Module, train: bool):
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
    with _network_mode(net, train=True):
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
    with _network_mode(net, train=False):  # BatchNorm running statistics stay untouched
        for modality, loader in loaders.items():
            for x, y, rows in loader:
                with forward_context():
                    logits = net.classify(x.to(device), modality)
                out[modality][rows.to(device)] = per_sample_ce(logits.float(), y.to(device))
    return out[VISIBLE], out[INFRARED]


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
    conf1, conf2, conf_ir = confidences
    with _network_mode(net, train=True):
        for v1, v2, ir, labels, vis_idx, ir_idx in batches:
            b = labels.shape[0]
            with forward_context():
                f, _ = net.forward_train(torch.cat([v1, v2]).to(device), ir.to(device))
            vis_idx, ir_idx = vis_idx.to(device), ir_idx.to(device)
            w = torch.cat([conf1[vis_idx], conf2[vis_idx], conf_ir[ir_idx]])  # (3B,)
            slots = torch.arange(3, device=device).repeat_interleave(b)
            bank.accumulate(f.float(), labels.to(device).repeat(3), slots, w)
