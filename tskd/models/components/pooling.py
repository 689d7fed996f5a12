"""Generalised-mean (GeM) pooling of a feature map into one vector per image."""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """GeM pooling: ``(mean_{h,w} clamp(x, eps) ** p) ** (1 / p)`` per channel.

    ``p = 1`` is average pooling and ``p -> inf`` approaches max pooling; docs/method.md fixes
    ``p = 3``. The clamp keeps the fractional root defined (post-ReLU maps are ``>= 0``, and a
    zero channel would otherwise give an infinite gradient).

    Args:
        p: The exponent.
        eps: Lower clamp of the activations.
        learnable: Make ``p`` a trainable parameter (off by default: the method uses a fixed p).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}; use p=3 (the default).")
        self.eps = float(eps)
        self.learnable = bool(learnable)
        if self.learnable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` (B, C, H, W) into (B, C).

        The computation runs in float32 even under fp16 autocast: ``x ** 3`` of ordinary
        activations (a few tens) already overflows fp16's maximum of 65504.
        """
        p = self.p
        x = x.float().clamp(min=self.eps).pow(p)
        return x.mean(dim=(-2, -1)).pow(1.0 / p)  # (B, C)

    def extra_repr(self) -> str:
        p = float(self.p.detach()) if self.learnable else self.p
        return f"p={p:g}, eps={self.eps:g}, learnable={self.learnable}"
