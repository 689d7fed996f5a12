"""Using a trained model: load a checkpoint once, embed images of either modality.

    from tskd.features.images import Embedder
    embedder = Embedder.from_checkpoint("logs/train/runs/.../checkpoints/last.ckpt")
    feats = embedder.embed(["a.jpg", "b.jpg"], modality="infrared")   # (2, C) float32
    sims = feats @ gallery_feats.T                                      # cosine similarities

Images are prepared exactly as the evaluation prepares them: decoded to RGB, resized to the
checkpoint's image size with PIL LANCZOS (:func:`tskd.data.cache.load_image`), then
ImageNet-normalised (:func:`tskd.data.transforms.normalize_batch`). An image therefore gets the
same feature here as in ``eval.py``, so features from this API can be compared with each other
and with the reported numbers' setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tskd.checkpoints.loading import build_module, load_checkpoint
from tskd.core.errors import CheckpointError, DatasetError, InputError
from tskd.core.finite import nonfinite_message
from tskd.data.cache import load_image, to_rgb
from tskd.data.layout import broken_link, require_utf8_name
from tskd.data.protocol import INFRARED, MODALITY_NAMES, VISIBLE
from tskd.data.transforms import normalize_batch

log = logging.getLogger(__name__)

FEATURES = ("fc", "pool")
# Accepted spellings of the two modalities; RegDB calls its infrared camera "thermal".
_MODALITY_ALIASES = {"visible": VISIBLE, "rgb": VISIBLE, "infrared": INFRARED,
                     "ir": INFRARED, "thermal": INFRARED}

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def parse_modality(modality: str | int) -> int:
    """``"visible"``/``0`` -> 0, ``"infrared"``/``"thermal"``/``1`` -> 1.

    Raises:
        InputError: Any other value (the message lists the accepted ones).
    """
    if isinstance(modality, str) and modality.strip().lower() in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[modality.strip().lower()]
    # bool is an int subclass; True/False are almost certainly a mistake here
    if isinstance(modality, int | np.integer) and not isinstance(modality, bool):
        if int(modality) in MODALITY_NAMES:
            return int(modality)
    raise InputError(
        f"unknown modality {modality!r}; use 'visible' (or 0) for colour camera images and "
        "'infrared' (or 'thermal', 1) for infrared camera images."
    )


def prepare_image(image: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """One image (path, PIL image or uint8 array) -> uint8 (h, w, 3), resized like the cache.

    An array already of shape (h, w, 3) is taken as is (e.g. a row of a cached array); any other
    array is converted to a PIL image and resized the same way as a file.
    """
    h, w = size
    if isinstance(image, str | os.PathLike):
        return load_image(image, size)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(
                f"image array has dtype {image.dtype}; pass uint8 RGB (H, W, 3) arrays, e.g. "
                "np.asarray(PIL.Image.open(path).convert('RGB'))."
            )
        if image.shape == (h, w, 3):
            return np.ascontiguousarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InputError(
                f"image array has shape {image.shape}; pass (H, W, 3) RGB, (H, W, 4) RGBA or "
                "(H, W) grey uint8 arrays."
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        # the same conversion and resize as tskd.data.cache.load_image (PIL sizes are (w, h))
        # to_rgb scales 16-bit (thermal) images to 8 bits instead of saturating them to white
        return np.asarray(to_rgb(image).resize((w, h), Image.LANCZOS), dtype=np.uint8)
    raise InputError(
        f"cannot embed an object of type {type(image).__name__}; pass file paths, PIL images or "
        "uint8 (H, W, 3) arrays."
    )


class Embedder:
    """A trained TSKD network ready to turn images into retrieval features.

    Args:
        module: A ``TSKDModule`` (e.g. from :func:`tskd.checkpoints.loading.build_module`).
        img_size: ``(height, width)`` the model was trained at.
        device: Where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        source: Where the weights came from (the checkpoint file), for messages.

    Attributes:
        img_size: ``(height, width)`` every image is resized to.
        feat_dim: Feature dimension C.
        source: The checkpoint file (or ``"the given module"``).
    """

    def __init__(self, module: torch.nn.Module, img_size: tuple[int, int],
                 device: str | torch.device = "cpu", source: str | None = None) -> None:
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.feat_dim = int(module.net.feat_dim)
        self.source = str(source) if source is not None else "the given module"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        flip: bool = False) -> Embedder:
        """Load a checkpoint written by ``train.py``.

        Args:
            path: The ``.ckpt`` file.
            device: Where the network runs.
            flip: Average each feature with the horizontally flipped image's (off in the
                standard protocol, as in ``eval.flip``).

        Raises:
            CheckpointError: Missing, unreadable or incompatible checkpoint.
        """
        from tskd.config import EvalPassOptions

        ckpt = load_checkpoint(path)
        module = build_module(ckpt, path, eval=EvalPassOptions(flip=bool(flip)),
                              channels_last=False)
        meta = ckpt["tskd"]
        log.info("loaded %s (%s, %s, image %s)", path, meta["dataset"], meta["backbone"],
                 meta["img_size"])
        return cls(module, tuple(meta["img_size"]), device=device, source=str(path))

    @torch.inference_mode()
    def embed_arrays(self, images: np.ndarray, modality: str | int, feature: str = "fc"
                     ) -> np.ndarray:
        """One batch of prepared uint8 (B, h, w, 3) images -> L2-normalised (B, C) float32."""
        m = parse_modality(modality)
        x = normalize_batch(np.asarray(images)).to(self.device)  # (B, 3, h, w)
        pool, fc = self.module.embed(x, m)
        out = fc if feature == "fc" else pool
        return out.float().cpu().numpy()

    def embed(self, images: Sequence[ImageLike], modality: str | int, batch_size: int = 64,
              feature: str = "fc") -> np.ndarray:
        """Features of ``images``, all of one modality.

        Args:
            images: File paths, PIL images or uint8 (H, W, 3) arrays (mixed is fine), a
                stacked uint8 (N, H, W, 3) array, or one image.
            modality: ``"visible"``/``0`` or ``"infrared"``/``"thermal"``/``1``: selects the
                network's stem, so it must match the camera that took the images.
            batch_size: Images per forward pass (memory only; the result does not depend on it
                beyond float rounding).
            feature: ``"fc"`` (after the BN-neck: the reported feature) or ``"pool"``.

        Returns:
            float32 (N, C), rows L2-normalised, in the order of ``images``.

        Raises:
            InputError: No images, an unknown modality or feature.
            DatasetError: An unreadable image.
            CheckpointError: A feature holds NaN/Inf (weights saved after training diverged):
                never returned, since NaN ranks and compares silently wrong.
        """
        parse_modality(modality)  # fail before decoding anything
        if feature not in FEATURES:
            raise InputError(f"unknown feature {feature!r}; use 'fc' (reported) or 'pool'.")
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)  # a stacked (N, H, W, 3) batch
        elif isinstance(images, str | os.PathLike | Image.Image | np.ndarray):
            images = [images]  # a single image: a one-row result, not a list of its rows
        if len(images) == 0:
            raise InputError("no images to embed; pass a non-empty list of paths/images.")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([prepare_image(im, self.img_size)
                              for im in images[start:start + batch_size]])  # (B, h, w, 3)
            chunks.append(self.embed_arrays(batch, modality, feature))
        feats = np.concatenate(chunks).astype(np.float32, copy=False)
        self._require_finite(feats)
        return feats

    def _require_finite(self, feats: np.ndarray) -> None:
        """Stop on NaN/Inf features, naming the checkpoint (and its bad weights) or the rows."""
        bad_rows = np.flatnonzero(~np.isfinite(feats).all(axis=1))
        if not len(bad_rows):
            return
        what = f"non-finite features (NaN/Inf) for {len(bad_rows)} of {len(feats)} images"
        weights = nonfinite_message(self.source, self.module.state_dict())
        if weights:
            raise CheckpointError(f"{weights}. It gives {what}.")
        raise CheckpointError(f"{self.source} gives {what} (first: image {bad_rows[0]}) although "
                              "its weights are finite; check those images.")


def list_images(folder: str | os.PathLike,
                extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp")) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by their path relative to it.

    Raises:
        InputError: ``folder`` is not a directory or holds no image, or an image name is a
            symbolic link to nothing (or a loop), or not UTF-8.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; pass the folder holding the images.")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in exts:
            continue
        if not p.is_file():
            if p.is_symlink():  # a link to nothing or a loop: an image would silently be missing
                raise InputError(broken_link(str(p), "image"))
            continue
        try:
            require_utf8_name(str(p))
        except DatasetError as err:
            raise InputError(str(err)) from None
        files.append(p)
    if not files:
        raise InputError(
            f"no images ({', '.join(sorted(exts))}) found in {root} or its subfolders; check the "
            "path or pass --ext for other file types."
        )
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
