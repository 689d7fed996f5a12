"""Two-stream ResNet: one stem per modality, shared residual stages with non-local blocks.

Built from a torchvision ResNet so that parameter names follow torchvision's (``layer3.4.conv2``
...) and ImageNet weights load by name (see :mod:`tskd.models.components.pretrained`). The stem
(conv1, bn1, relu, maxpool) exists twice, ``visible_stem`` and ``infrared_stem``; layer1-layer4
are shared, so the BatchNorm layers of the shared stages see both modalities in one batch.
Non-local blocks live in ``nl_layer2`` / ``nl_layer3`` (keyed by the index of the residual block
they follow), outside the torchvision names, so they never clash with pretrained keys.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from tskd.data.protocol import INFRARED, VISIBLE
from tskd.models.components.non_local import NonLocalBlock

# Constructor and output channels of each supported depth.
BACKBONES = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}
# layer4's stride: 1 keeps the feature map twice as large (the paper's), 2 is torchvision's
LAST_STRIDES = (1, 2)
# Non-local blocks after the last 2 blocks of layer2 and the last 3 of layer3 (AGW placement).
NON_LOCAL_COUNTS = {"layer2": 2, "layer3": 3}


def _make_stem(resnet: nn.Module) -> nn.Sequential:
    """Wrap the stem modules of a torchvision ResNet under their torchvision names."""
    return nn.Sequential(
        OrderedDict(conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu, maxpool=resnet.maxpool)
    )


class TwoStreamResNet(nn.Module):
    """Modality-specific stems followed by shared ResNet stages.

    Args:
        depth: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        last_stride: Stride of layer4 (1 keeps an 18×9 map for a 288×144 input; 2 is the
            ImageNet default).
        non_local: Insert non-local blocks into layer2 and layer3.
        nl_inter_channels: Inner width of the non-local blocks (see :class:`NonLocalBlock`).

    Convolutions keep torchvision's Kaiming-normal (fan_out) initialisation. Both stems start
    from the same weights, as they do with ImageNet weights: the modalities begin in one feature
    space and training lets the stems diverge. (With independent draws a from-scratch model
    first has to learn to map two unrelated stem outputs together; on the CPU demo cross-modal
    retrieval then stayed at chance.)
    """

    def __init__(
        self,
        depth: str = "resnet50",
        last_stride: int = 1,
        non_local: bool = True,
        nl_inter_channels: int | None = 1,
    ) -> None:
        super().__init__()
        if depth not in BACKBONES:
            raise ValueError(
                f"unknown backbone {depth!r}; set model.backbone to one of {sorted(BACKBONES)}."
            )
        if last_stride not in LAST_STRIDES:
            raise ValueError(f"last_stride must be one of {LAST_STRIDES}, got {last_stride!r}.")
        build, self.out_channels = BACKBONES[depth]
        self.depth = depth
        resnet = build(weights=None)

        self.visible_stem = _make_stem(resnet)
        self.infrared_stem = copy.deepcopy(self.visible_stem)  # same start, separate weights
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        if last_stride == 1:
            # torchvision puts the stride in conv1 (BasicBlock) or conv2 (Bottleneck) and in
            # the downsample conv: undo every stride-2 conv of layer4's first block.
            for module in self.layer4[0].modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)

        self.nl_layer2 = nn.ModuleDict()
        self.nl_layer3 = nn.ModuleDict()
        if non_local:
            for name, blocks in (("layer2", self.nl_layer2), ("layer3", self.nl_layer3)):
                layer = getattr(self, name)
                channels = _block_out_channels(layer[-1])
                count = min(NON_LOCAL_COUNTS[name], len(layer))
                for idx in range(len(layer) - count, len(layer)):
                    blocks[str(idx)] = NonLocalBlock(channels, nl_inter_channels)

    def stem(self, x: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        """Run each image through the stem of its modality, keeping the batch order.

        Args:
            x: Images (B, 3, H, W).
            modality: ``0`` (visible) or ``1`` (infrared) for the whole batch, or an int64
                tensor (B,) with one of those values per image.

        Returns:
            Stem output (B, 64, H/4, W/4).
        """
        if isinstance(modality, torch.Tensor) and modality.dim() == 0:
            modality = int(modality)
        if not isinstance(modality, torch.Tensor):
            if modality == VISIBLE:
                return self.visible_stem(x)
            if modality == INFRARED:
                return self.infrared_stem(x)
            raise ValueError(
                f"modality must be {VISIBLE} (visible) or {INFRARED} (infrared), got {modality!r}."
            )
        modality = modality.to(x.device).reshape(-1)
        if modality.numel() != x.shape[0]:
            raise ValueError(
                f"modality tensor has {modality.numel()} entries for a batch of {x.shape[0]} "
                "images; pass one value per image or a single int."
            )
        outputs, order = [], []
        for value, stem in ((VISIBLE, self.visible_stem), (INFRARED, self.infrared_stem)):
            idx = (modality == value).nonzero(as_tuple=True)[0]
            if idx.numel():
                # Only this modality's images enter its stem, so each stem's BatchNorm
                # statistics stay single-modality even for a mixed batch in train mode.
                outputs.append(stem(x[idx]))
                order.append(idx)
        if sum(idx.numel() for idx in order) != x.shape[0]:
            bad = sorted(set(modality.tolist()) - {VISIBLE, INFRARED})
            raise ValueError(
                f"modality values must be {VISIBLE} or {INFRARED}, got {bad}; label each image "
                "as visible (0) or infrared (1)."
            )
        y = torch.cat(outputs)  # (B, 64, h, w) grouped by modality
        return y[torch.argsort(torch.cat(order))]  # back to the input order

    def _run_layer(self, x: torch.Tensor, layer: nn.Sequential, nl: nn.ModuleDict) -> torch.Tensor:
        for idx, block in enumerate(layer):
            x = block(x)
            key = str(idx)
            if key in nl:
                x = nl[key](x)
        return x

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Shared stages: stem output (B, 64, H/4, W/4) -> map (B, C, H/16, W/16), last stride 1."""
        x = self.layer1(x)
        x = self._run_layer(x, self.layer2, self.nl_layer2)
        x = self._run_layer(x, self.layer3, self.nl_layer3)
        return self.layer4(x)

    def forward(self, x: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        """Feature map of images ``x`` (B, 3, H, W): (B, C, H/16, W/16) with last stride 1."""
        return self.shared(self.stem(x, modality))


def _block_out_channels(block: nn.Module) -> int:
    """Output channels of a torchvision BasicBlock/Bottleneck (the width of its last BN)."""
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features
