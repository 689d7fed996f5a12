"""BN-neck and identity classifier on top of the pooled feature."""

from __future__ import annotations

import torch
from torch import nn


class BNNeckHead(nn.Module):
    """BatchNorm1d "neck" followed by a bias-free linear identity classifier.

    The pooled feature ``f`` feeds the metric losses; its batch-normalised version feeds the
    classifier and is the test embedding. The BN bias is frozen at zero (``requires_grad``
    False) so the normalised feature stays centred at the origin, which suits cosine retrieval;
    an optimiser never receives it, so weight decay cannot move it either.

    Args:
        in_features: Feature dimension C.
        num_classes: Number of training identities.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(
                f"num_classes must be >= 1, got {num_classes}; pass the number of training "
                "identities."
            )
        self.bnneck = nn.BatchNorm1d(in_features)
        self.classifier = nn.Linear(in_features, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as in the AGW lineage: BN weight N(1, 0.01), bias 0; classifier N(0, 1e-3)."""
        nn.init.normal_(self.bnneck.weight, mean=1.0, std=0.01)
        nn.init.zeros_(self.bnneck.bias)
        self.bnneck.bias.requires_grad_(False)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.001)

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        """Batch-normalise the pooled feature ``f`` (B, C) -> (B, C)."""
        return self.bnneck(f)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(bn_feature (B, C), logits (B, num_classes))`` for pooled features ``f``."""
        feat = self.bnneck(f)
        return feat, self.classifier(feat)
