"""Image transforms of the training pipeline (docs/method.md, "Batches") and the test normalisation.

Every random decision is drawn from an explicit ``torch.Generator`` passed in by the caller, so a
sample's augmentation is a pure function of its seed: identical across DataLoader workers, ranks
and resumed runs. Resizing is not done here; the cache already stores images at the model size.

Training views (all tensors (3, H, W) float):
    visible view 1: pad 10 -> random crop -> flip -> normalise -> channel random erasing
    visible view 2: an independent draw of view 1's pipeline, then channel exchange
    infrared:       view 1's pipeline, then channel-adaptive gray (CAJ's draw)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tskd.core.errors import DatasetError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# The erasing fill of the reference pipeline: CIFAR channel means written into the *normalised*
# tensor (a quirk kept for fidelity; it is not the ImageNet mean).
ERASE_FILL = (0.4914, 0.4822, 0.4465)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=g))


def _as_chw_uint8(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) numpy/tensor (e.g. a memmap row) -> uint8 tensor (3, H, W)."""
    if isinstance(img, np.ndarray):
        # Copy: memmap rows are read-only and torch wants writable memory.
        img = torch.from_numpy(np.array(img, dtype=np.uint8))
    return img.permute(2, 0, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float image(s) in [0, 1], (..., 3, H, W) -> ImageNet-normalised float32."""
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x.float() - mean) / std


def to_tensor(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) image -> float32 (3, H, W) in [0, 1]."""
    return _as_chw_uint8(img).float().div_(255.0)


def normalize_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy array or tensor -> normalised float32 tensor (B, 3, H, W).

    A tensor input stays on its device, so a GPU can do the work on uploaded uint8 batches.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images, dtype=np.uint8))
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    return normalize(x)


def eval_transform(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The test-time transform: uint8 (H, W, 3) -> normalised float32 (3, H, W)."""
    return normalize(to_tensor(img))


def pad_crop_flip(x: torch.Tensor, height: int, width: int, g: torch.Generator,
                  pad: int = 10) -> torch.Tensor:
    """Zero-pads by ``pad``, crops a random ``height``x``width`` window, flips with p = 0.5.

    Works on uint8 or float (3, H, W) tensors; the padding is 0 (black) as in the reference
    pipeline, which pads the uint8 image before normalisation.
    """
    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x  # (3, H+2pad, W+2pad)
    ph, pw = padded.shape[-2:]
    if ph < height or pw < width:
        raise ValueError(f"image {tuple(x.shape)} padded by {pad} is smaller than the crop "
                         f"{height}x{width}; check dataset.img_h / dataset.img_w")
    top = _randint(0, ph - height, g)
    left = _randint(0, pw - width, g)
    out = padded[:, top:top + height, left:left + width]
    if _uniform(g) < 0.5:
        out = out.flip(-1)
    return out.contiguous()


def channel_random_erasing(x: torch.Tensor, g: torch.Generator, p: float = 0.5,
                           area: tuple[float, float] = (0.02, 0.4), min_aspect: float = 0.3,
                           fill: tuple[float, float, float] = ERASE_FILL) -> torch.Tensor:
    """With probability ``p`` fills one random rectangle with a per-channel constant.

    The rectangle's area fraction is uniform in ``area`` and its aspect ratio (h / w) uniform in
    [min_aspect, 1 / min_aspect] (uniform, as in the reference code, not log-uniform). Up to 100
    draws are tried until the rectangle fits strictly inside the image; if none fits the image is
    returned unchanged. Returns a new tensor.
    """
    out = x.clone()
    if _uniform(g) >= p:
        return out
    _, h_img, w_img = out.shape
    for _ in range(100):
        target = (area[0] + (area[1] - area[0]) * _uniform(g)) * h_img * w_img
        aspect = min_aspect + (1.0 / min_aspect - min_aspect) * _uniform(g)
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if h < h_img and w < w_img:
            top = _randint(0, h_img - h, g)
            left = _randint(0, w_img - w, g)
            for c in range(3):
                out[c, top:top + h, left:left + w] = fill[c]
            return out
    return out


def channel_exchange(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Copies one of R, G, B (uniformly chosen) to all three channels."""
    c = _randint(0, 2, g)
    return x[c:c + 1].expand(3, -1, -1).clone()


GRAY_DRAWS = ("caj", "gated")


def _gray_mix(x: torch.Tensor) -> torch.Tensor:
    wr, wg, wb = GRAY_WEIGHTS
    gray = wr * x[0] + wg * x[1] + wb * x[2]  # (H, W)
    return gray.unsqueeze(0).expand(3, -1, -1).clone()


def channel_adaptive_gray(x: torch.Tensor, g: torch.Generator, p: float = 0.5,
                          draw: str = "caj") -> torch.Tensor:
    """Channel-adaptive gray on a normalised (3, H, W) infrared tensor; returns a new tensor.

    ``draw="caj"`` (default, the CAJ code the authors build on): draw c uniformly from
    {0, 1, 2, 3}; c < 3 copies channel c to all three; c = 3 applies the grayscale mix with
    probability ``p``, else leaves the image unchanged. With p = 0.5: channel copy 3/4, gray 1/8,
    unchanged 1/8.

    ``draw="gated"`` (this project's first reading): with probability ``p`` one of the four
    (three copies, gray) uniformly, otherwise unchanged: unchanged 1/2 at p = 0.5.

    The grayscale mix is taken of normalised channels, as the reference applies it after
    normalisation.
    """
    if draw == "caj":
        choice = _randint(0, 3, g)
        if choice < 3:
            return x[choice:choice + 1].expand(3, -1, -1).clone()
        return _gray_mix(x) if _uniform(g) < p else x.clone()
    if draw != "gated":
        raise ValueError(f"data.gray_draw={draw!r}: use one of {GRAY_DRAWS}")
    if _uniform(g) >= p:
        return x.clone()
    choice = _randint(0, 3, g)
    if choice < 3:
        return x[choice:choice + 1].expand(3, -1, -1).clone()
    return _gray_mix(x)


class TrainTransform:
    """Builds the three training views (visible 1, visible 2, infrared) of one aligned pair.

    Args:
        height: Crop height (= the model input height).
        width: Crop width.
        pad: Zero padding before the random crop.
        erasing_p: Probability of channel random erasing.
        gray_p: Probability of the grayscale mix in channel-adaptive gray (see
            :func:`channel_adaptive_gray`).
        gray_draw: ``"caj"`` (default) or ``"gated"``, see :func:`channel_adaptive_gray`.
        erasing: False disables random erasing on all views.
        channel_exchange: False leaves visible view 2 without channel exchange.
        adaptive_gray: False leaves infrared images without channel-adaptive gray.
    """

    def __init__(self, height: int, width: int, pad: int = 10, erasing_p: float = 0.5,
                 gray_p: float = 0.5, erasing: bool = True, channel_exchange: bool = True,
                 adaptive_gray: bool = True, gray_draw: str = "caj") -> None:
        if pad < 0:
            raise DatasetError(f"data.pad={pad}: the crop padding must be >= 0 pixels (paper: 10)")
        self.height, self.width, self.pad = height, width, int(pad)
        self.erasing_p, self.gray_p = erasing_p, gray_p
        # Stored under use_* names: the bare names are the module's transform functions.
        self.use_erasing = erasing
        self.use_channel_exchange = channel_exchange
        self.use_adaptive_gray = adaptive_gray
        if gray_draw not in GRAY_DRAWS:
            raise DatasetError(f"data.gray_draw={gray_draw!r}: use one of {GRAY_DRAWS}")
        self.gray_draw = gray_draw

    def _base(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """pad/crop/flip -> [0, 1] -> normalise -> erasing, on a uint8 (3, H, W) tensor."""
        x = pad_crop_flip(img, self.height, self.width, g, pad=self.pad)
        x = normalize(x.float().div_(255.0))
        if self.use_erasing:
            x = channel_random_erasing(x, g, p=self.erasing_p)
        return x

    def visible_views(self, vis: np.ndarray | torch.Tensor,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (H, W, 3) visible image -> views 1 and 2, float32 (3, h, w), drawn in order."""
        vis_t = _as_chw_uint8(vis)
        v1 = self._base(vis_t, g)
        v2 = self._base(vis_t, g)
        if self.use_channel_exchange:
            v2 = channel_exchange(v2, g)
        return v1, v2

    def infrared_view(self, ir: np.ndarray | torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 (H, W, 3) infrared image -> its training view, float32 (3, h, w)."""
        x_ir = self._base(_as_chw_uint8(ir), g)
        if self.use_adaptive_gray:
            x_ir = channel_adaptive_gray(x_ir, g, p=self.gray_p, draw=self.gray_draw)
        return x_ir

    def __call__(self, vis: np.ndarray | torch.Tensor, ir: np.ndarray | torch.Tensor,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (H, W, 3) visible and infrared images -> three float32 (3, h, w) views.

        Draws happen in a fixed order (view 1, view 2, infrared) from ``g``.
        """
        v1, v2 = self.visible_views(vis, g)
        return v1, v2, self.infrared_view(ir, g)
