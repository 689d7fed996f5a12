"""The TSKD network: two-stream ResNet, GeM pooling and a BN-neck classifier head."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tskd.models.components.backbone import TwoStreamResNet
from tskd.models.components.head import BNNeckHead
from tskd.models.components.pooling import GeM
from tskd.models.components.pretrained import (
    imagenet_weights,
    load_into_backbone,
    resolve_pretrained,
)


class TwoStreamNet(nn.Module):
    """Visible/infrared re-identification network of docs/method.md, "Network".

    Images pass their modality's stem, the shared ResNet stages (with non-local blocks), GeM
    pooling (the feature ``f`` used by the metric losses) and the BN-neck, whose output feeds
    the classifier and, L2-normalised, is the retrieval embedding.

    Args:
        num_classes: Number of training identities.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        pretrained: ``False``/``None`` (random init), ``True`` (torchvision ImageNet weights,
            downloaded) or a path to a torchvision-format state dict; see
            :mod:`tskd.models.components.pretrained`.
        last_stride: Stride of layer4 (1 or 2).
        non_local: Insert the AGW non-local blocks into layer2/layer3.
        nl_inter_channels: Inner width of the non-local blocks; 1 is the AGW value, ``0`` or
            ``None`` means half the block's input channels.
        gem_p: Fixed GeM exponent.

    Attributes:
        feat_dim: Feature dimension C (512 for resnet18/34, 2048 for resnet50).
        num_classes: Number of identities of the classifier.
        config: The constructor arguments as primitives, for checkpoints. ``pretrained`` only
            records how the weights were first initialised; a model rebuilt from a checkpoint
            should pass ``pretrained=False`` and load the checkpoint's weights instead.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool | str | os.PathLike | None = False,
        last_stride: int = 1,
        non_local: bool = True,
        nl_inter_channels: int | None = 1,
        gem_p: float = 3.0,
    ) -> None:
        super().__init__()
        self.config = {
            "num_classes": int(num_classes),
            "backbone": str(backbone),
            "pretrained": os.fspath(pretrained)
            if isinstance(pretrained, os.PathLike)
            else pretrained,
            "last_stride": int(last_stride),
            "non_local": bool(non_local),
            "nl_inter_channels": None if nl_inter_channels is None else int(nl_inter_channels),
            "gem_p": float(gem_p),
        }
        self.backbone = TwoStreamResNet(backbone, last_stride, non_local, nl_inter_channels)
        self.feat_dim = self.backbone.out_channels
        self.num_classes = int(num_classes)
        self.pool = GeM(p=gem_p)
        self.head = BNNeckHead(self.feat_dim, self.num_classes)
        # The memory format inputs are given before the first convolution: every caller (the
        # training step, the per-epoch passes, the test pass) gets the network's own format.
        self.input_format = torch.contiguous_format

        state_dict = resolve_pretrained(pretrained, backbone)
        if state_dict is not None:
            source = imagenet_weights(backbone).url if pretrained is True else str(pretrained)
            load_into_backbone(self.backbone, state_dict, source)

    def use_channels_last(self) -> TwoStreamNet:
        """Weights and, from now on, inputs in the channels-last memory format (GPU speed)."""
        self.to(memory_format=torch.channels_last)
        self.input_format = torch.channels_last
        return self

    # ------------------------------------------------------------------ features
    def pooled(self, x: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        """Pre-BN GeM feature ``f`` (B, C) of images ``x`` (B, 3, H, W) of ``modality``."""
        return self.pool(self.backbone(x.contiguous(memory_format=self.input_format), modality))

    def forward(self, x: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: L2-normalised BN-neck feature ("fc"), (B, C).

        Args:
            x: Images (B, 3, H, W), normalised.
            modality: 0 (visible) / 1 (infrared) for the whole batch, or an int64 tensor (B,).
        """
        return F.normalize(self.head.embed(self.pooled(x, modality)), dim=1)

    def extract(
        self, x: torch.Tensor, modality: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both test features from one pass: L2-normalised ``(pool, fc)``, each (B, C)."""
        f = self.pooled(x, modality)
        return F.normalize(f, dim=1), F.normalize(self.head.embed(f), dim=1)

    def classify(self, x: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        """Identity logits (B, num_classes) of images of ``modality`` (e.g. for per-sample CE)."""
        return self.head(self.pooled(x, modality))[1]

    def forward_train(
        self, x_vis: torch.Tensor, x_ir: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass over a visible and an infrared batch.

        The stems run separately, then their outputs are concatenated so the shared stages'
        BatchNorm normalises both modalities together.

        Args:
            x_vis: Visible images (2B, 3, H, W) = [view1; view2].
            x_ir: Infrared images (B, 3, H, W).

        Returns:
            ``f`` (3B, C) pre-BN GeM features ordered [view1; view2; ir] and ``logits``
            (3B, num_classes) = classifier(bnneck(f)).
        """
        if x_vis.shape[1:] != x_ir.shape[1:]:
            raise ValueError(
                f"visible images {tuple(x_vis.shape)} and infrared images {tuple(x_ir.shape)} "
                "must share channels and size; resize both to (dataset.img_h, dataset.img_w)."
            )
        fmt = self.input_format
        stem_vis = self.backbone.visible_stem(x_vis.contiguous(memory_format=fmt))  # (2B, 64, ..)
        stem_ir = self.backbone.infrared_stem(x_ir.contiguous(memory_format=fmt))  # (B, 64, ..)
        f = self.pool(self.backbone.shared(torch.cat([stem_vis, stem_ir])))  # (3B, C)
        _, logits = self.head(f)
        return f, logits

    # ------------------------------------------------------------ optimiser groups
    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of stems, shared stages, non-local blocks (and GeM if learnt)."""
        for module in (self.backbone, self.pool):
            yield from (p for p in module.parameters() if p.requires_grad)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of the BN-neck and classifier (the frozen BN bias excluded)."""
        yield from (p for p in self.head.parameters() if p.requires_grad)
