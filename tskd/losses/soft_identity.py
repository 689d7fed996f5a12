"""Soft-identity (SI) cross-entropy: identity classification weighted by per-sample confidence.

TSKD trusts each training image according to how well the previous epoch's network classified
it: a two-component Gaussian mixture on the per-image cross-entropy (see
:mod:`tskd.losses.confidence`) gives a confidence ``w_i`` in [0, 1], and the identity loss is

    L_SI = mean_i  w_i * CE_i

over the batch. There is deliberately no label smoothing (the paper uses plain CE). With
``weights=None`` the loss is the ordinary mean cross-entropy, used during the warm-up epoch
before any confidence exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SoftIdentityLoss", "per_sample_ce"]


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes when logits/labels do not fit together."""
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be (N, num_classes), got shape {tuple(logits.shape)}; "
            "flatten any extra dimensions before calling the loss"
        )
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be (N,) with N = {logits.shape[0]} (rows of logits), got shape "
            f"{tuple(labels.shape)}; pass one integer identity per row of logits"
        )


def per_sample_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample, without reduction.

    Used both inside :class:`SoftIdentityLoss` and for the per-epoch no-grad pass whose losses
    feed the GMM confidences.

    Args:
        logits: Class scores, shape (N, num_classes).
        labels: Integer identities, shape (N,).

    Returns:
        Tensor of shape (N,) with ``CE_i = -log softmax(logits_i)[labels_i]``.

    Raises:
        ValueError: If the shapes do not match.
    """
    _check_logits_labels(logits, labels)
    return F.cross_entropy(logits, labels.long(), reduction="none")


class SoftIdentityLoss(nn.Module):
    """Confidence-weighted cross-entropy ``mean_i w_i * CE_i`` (plain mean CE without weights)."""

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the soft-identity loss.

        Args:
            logits: Class scores, shape (N, num_classes).
            labels: Integer identities, shape (N,).
            weights: Per-sample confidences, shape (N,), or ``None`` for the unweighted mean.
                They are treated as constants (detached): confidences are estimated outside the
                graph and must not be optimised.

        Returns:
            Scalar loss. The mean is over all N samples (not over the sum of weights), so
            low-confidence samples shrink the loss rather than being renormalised away.

        Raises:
            ValueError: If shapes do not match.
        """
        ce = per_sample_ce(logits, labels)  # (N,)
        if weights is None:
            return ce.mean()
        if weights.shape != ce.shape:
            raise ValueError(
                f"weights must have shape {tuple(ce.shape)} (one confidence per sample), got "
                f"{tuple(weights.shape)}; pass the confidences gathered for this batch"
            )
        return (weights.detach().to(ce.dtype) * ce).mean()
