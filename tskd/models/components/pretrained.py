"""ImageNet weights for the two-stream backbone: where they come from and how they map.

``model.pretrained`` takes three forms (:func:`resolve_pretrained`):

* ``false`` / ``None``: no weights, the random (Kaiming) initialisation stays.
* ``true``: torchvision's ImageNet weights ``IMAGENET1K_V1`` (the original ResNet release that
  AGW-style code starts from, not torchvision's later V2 recipe), downloaded through
  ``torch.hub`` into its cache only when asked for.
* a path: a torchvision-format ResNet state dict (``conv1.weight``, ``layer1.0.bn1.weight``,
  ...), possibly wrapped as ``{"state_dict": ...}``, read with ``weights_only=True``. This is the
  way to train on a machine without internet access.

:func:`load_into_backbone` copies ``conv1``/``bn1`` into *both* stems and ``layer1``-``layer4``
into the shared stages; ``fc.*`` is ignored and the non-local blocks keep their own init.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from tskd.core.errors import CheckpointError

log = logging.getLogger(__name__)

_WEIGHT_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
}
_STEM_PREFIXES = ("conv1.", "bn1.")
_STEMS = ("visible_stem", "infrared_stem")
_NON_LOCAL_PREFIXES = ("nl_layer2.", "nl_layer3.")
_MAX_LISTED = 5  # keys quoted in an error message


def imagenet_weights(backbone: str) -> torchvision.models.WeightsEnum:
    """The torchvision ``IMAGENET1K_V1`` weights entry of ``backbone``."""
    if backbone not in _WEIGHT_ENUMS:
        raise ValueError(
            f"no ImageNet weights known for backbone {backbone!r}; use one of "
            f"{sorted(_WEIGHT_ENUMS)}."
        )
    return getattr(torchvision.models, _WEIGHT_ENUMS[backbone]).IMAGENET1K_V1


def weights_file_name(backbone: str) -> str:
    """torchvision's file name of the ImageNet weights, e.g. ``resnet50-0676ba61.pth``."""
    return imagenet_weights(backbone).url.rsplit("/", 1)[-1]


def resolve_pretrained(
    pretrained: bool | str | os.PathLike | None, backbone: str
) -> dict[str, torch.Tensor] | None:
    """Turn the ``model.pretrained`` setting into a torchvision-format state dict (or None).

    Raises:
        CheckpointError: The download failed, or the file is missing or not a state dict.
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return download_imagenet_state_dict(backbone)
    if isinstance(pretrained, (str, os.PathLike)):
        return read_weights_file(pretrained)
    raise ValueError(
        f"model.pretrained must be true, false or a path to a weights file, got {pretrained!r}."
    )


def download_imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """Fetch torchvision's ImageNet weights of ``backbone`` (cached by ``torch.hub``)."""
    weights = imagenet_weights(backbone)
    name = weights_file_name(backbone)
    try:
        # Called through the torch.hub module (not torchvision's import of it) so one patch
        # point covers every download, tests included.
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"Downloading the ImageNet weights for {backbone} from {weights.url} failed ({exc}). "
            f"Without internet access, copy the file {name} to this machine and set "
            f"model.pretrained=/path/to/{name} (or place it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}), or train from scratch with "
            "model.pretrained=false."
        ) from exc


def require_weights(pretrained: bool | str | os.PathLike | None, backbone: str) -> None:
    """Fails fast, before any data work, when ``model.pretrained`` cannot be satisfied.

    ``true`` is satisfied by torchvision's file in the torch hub cache, or else by a download
    made now (so a run that will need the network learns it in seconds, not after the caches
    are built); a path must be a readable file. ``false`` needs nothing.

    Raises:
        CheckpointError: Naming the expected file and the two ways on
            (``model.pretrained=/path/to/file``, ``model.pretrained=false``).
    """
    if pretrained is True:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / weights_file_name(backbone)
        if not cached.is_file():
            download_imagenet_state_dict(backbone)
    elif pretrained not in (None, False):
        read_weights_file(pretrained)


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision-format ResNet state dict from ``path`` (tensors only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Pretrained weights file {path} does not exist. Set model.pretrained to the path "
            "of a torchvision ResNet state dict (e.g. resnet50-0676ba61.pth), to true to "
            "download it, or to false to train from scratch."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "unreadable"
        raise CheckpointError(
            f"Could not read pretrained weights from {path} ({exc}). It must be a torchvision "
            "ResNet state dict saved with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(obj, dict) and "tskd" in obj:  # a whole trained model, not backbone weights
        raise CheckpointError(
            f"{path} is a tskd checkpoint (written by train.py), not ImageNet weights for the "
            f"backbone. To continue that training pass ckpt={path} (with its settings); to test "
            f"it, python eval.py ckpt={path}. model.pretrained takes a torchvision ResNet state "
            "dict (e.g. resnet50-0676ba61.pth), true to download it, or false."
        )
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}. Save the weights with torch.save(model.state_dict())."
        )
    # Weights saved from nn.DataParallel carry a "module." prefix on every key.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into_backbone(
    backbone: nn.Module, state_dict: dict[str, torch.Tensor], source: str
) -> None:
    """Copy torchvision ResNet weights into a :class:`TwoStreamResNet`.

    Args:
        backbone: The two-stream backbone.
        state_dict: torchvision-format ResNet weights.
        source: Where the weights came from (file or URL), for error messages.

    Raises:
        CheckpointError: Keys are missing or unexpected, or shapes differ; the message names
            ``source`` and the first offending keys.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue  # the ImageNet classifier has no counterpart here
        if key.startswith(_STEM_PREFIXES):
            for stem in _STEMS:  # both stems start from the same ImageNet stem
                mapped[f"{stem}.{key}"] = value
        else:
            mapped[key] = value

    target = backbone.state_dict()
    expected = {k for k in target if not k.startswith(_NON_LOCAL_PREFIXES)}
    # Files saved before BatchNorm counted its batches lack num_batches_tracked; harmless.
    missing = sorted(k for k in expected - mapped.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(mapped.keys() - target.keys())
    mismatched = [
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(mapped.keys() & target.keys())
        if mapped[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        depth = getattr(backbone, "depth", "the configured backbone")
        problems = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                problems.append(f"{len(keys)} {label} (first: {keys[:_MAX_LISTED]})")
        raise CheckpointError(
            f"Pretrained weights {source} do not fit backbone {depth}: {'; '.join(problems)}. "
            f"Point model.pretrained at a torchvision {depth} state dict or change "
            "model.backbone to the depth the file was saved from."
        )
    backbone.load_state_dict(mapped, strict=False)
    log.info("loaded pretrained %s weights from %s", getattr(backbone, "depth", ""), source)
