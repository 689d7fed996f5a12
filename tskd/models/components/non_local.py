"""Non-local block of the AGW lineage (embedded dot product, no softmax, zero-initialised output).

For a feature map ``x`` with N = H·W positions the block computes

    f = θ(x)ᵀ φ(x) / N          (N, N) affinity, scaled by N instead of a softmax
    y = f · g(x)                (N, C_i)
    z = W(y) + x                W = 1×1 conv back to C channels + BatchNorm

with θ, φ, g 1×1 convolutions to ``inter_channels`` (C_i). The BatchNorm of W starts with weight
and bias zero, so a freshly inserted block is the identity and does not disturb pretrained
features.

Because there is no softmax the product is associative: ``f · g = θᵀ (φ g) / N``. The forward
pass uses the right-hand form, which costs O(N·C_i²) instead of O(N²·C_i) and never stores the
N×N matrix; :meth:`NonLocalBlock.affinity` still gives ``f`` for inspection.
"""

from __future__ import annotations

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    """Residual non-local block.

    Args:
        in_channels: Channels C of the input map.
        inter_channels: Channels C_i of θ, φ and g. The AGW lineage (and so the TSKD code) uses
            1, a quirk of how it computes the value (``reduc_ratio // reduc_ratio``); it is the
            default here for fidelity. ``0`` or ``None`` gives the textbook ``in_channels // 2``.
    """

    def __init__(self, in_channels: int, inter_channels: int | None = 1) -> None:
        super().__init__()
        if not inter_channels:
            inter_channels = max(in_channels // 2, 1)
        if inter_channels < 0:
            raise ValueError(
                f"non-local inter_channels must be >= 0, got {inter_channels}; use 1 (AGW) or "
                "0 for in_channels // 2."
            )
        self.in_channels = in_channels
        self.inter_channels = int(inter_channels)
        # θ, φ, g keep PyTorch's default conv init, as in the AGW code.
        self.theta = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.g = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        # W of the formula: project back to C channels, then BN that starts at zero.
        self.proj = nn.Sequential(
            nn.Conv2d(self.inter_channels, in_channels, kernel_size=1),
            nn.BatchNorm2d(in_channels),
        )
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pairwise affinity ``f = θᵀφ / N`` of ``x`` (B, C, H, W) as (B, N, N)."""
        theta = self.theta(x).flatten(2)  # (B, C_i, N)
        phi = self.phi(x).flatten(2)  # (B, C_i, N)
        n = theta.shape[-1]
        return theta.transpose(1, 2) @ phi / n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block: (B, C, H, W) -> (B, C, H, W)."""
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C_i, N); flatten also copes with channels_last
        phi = self.phi(x).flatten(2)  # (B, C_i, N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C_i)
        n = theta.shape[-1]
        context = phi @ g / n  # (B, C_i, C_i) = φ g / N
        y = theta.transpose(1, 2) @ context  # (B, N, C_i) = (θᵀφ / N) g
        y = y.transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return self.proj(y) + x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, inter_channels={self.inter_channels}"
