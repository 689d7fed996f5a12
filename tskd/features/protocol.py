"""Embedding a protocol's test images: each image the searches need exactly once.

Also the one definition of flip test-time augmentation (:func:`flip_averaged`), which the
evaluation here and ``TSKDModule.embed`` both call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tskd.core.errors import InputError
from tskd.data.protocol import TestProtocol
from tskd.data.transforms import normalize_batch

log = logging.getLogger(__name__)

# (images (B, 3, H, W) normalised float, modality (B,) int64) -> (pool (B, C), fc (B, C)).
EmbedFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def flip_averaged(embed_fn: EmbedFn, x: torch.Tensor, modality
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool, fc) of ``x`` averaged with those of its mirror image, re-normalised.

    Args:
        embed_fn: The network's test pass, ``(x, modality) -> (pool, fc)``.
        x: (B, 3, H, W) normalised images.
        modality: Their modality (tensor or int), passed through to ``embed_fn``.
    """
    pool, fc = embed_fn(x, modality)
    pool_f, fc_f = embed_fn(x.flip(-1), modality)  # mirror along the width
    return F.normalize(pool + pool_f, dim=1), F.normalize(fc + fc_f, dim=1)


@torch.no_grad()  # plain tensors out (inference-mode tensors refuse later in-place use)
def embed_protocol(embed_fn: EmbedFn, images, protocol: TestProtocol, batch_size: int = 128,
                   flip: bool = False, device: str | torch.device = "cpu") -> dict:
    """Embed each image the protocol needs exactly once.

    Args:
        embed_fn: The network's test pass (put the model in eval mode first).
        images: uint8 (N, H, W, 3) array (e.g. a memmap) aligned with ``protocol.paths``.
        protocol: The searches; only ``protocol.needed()`` rows are read.
        batch_size: Images per call of ``embed_fn``.
        flip: Average each feature with that of the horizontally flipped image
            (:func:`flip_averaged`).
        device: Where ``embed_fn`` runs.

    Returns:
        ``{"index": int64 (M,), "pool": (M, C), "fc": (M, C)}`` float32 CPU tensors, rows in
        ``index`` order.
    """
    if len(images) != len(protocol.paths):
        raise InputError(f"the test image array has {len(images)} rows but the protocol lists "
                           f"{len(protocol.paths)} images; rebuild the test cache")
    index = protocol.needed()
    pools, fcs = [], []
    for s in range(0, len(index), batch_size):
        rows = index[s : s + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device)  # (B, H, W, 3)
        x = normalize_batch(batch)  # (B, 3, H, W)
        modality = torch.from_numpy(protocol.modality[rows]).to(device)
        pool, fc = flip_averaged(embed_fn, x, modality) if flip else embed_fn(x, modality)
        pools.append(pool.float().cpu())
        fcs.append(fc.float().cpu())
    log.info("embedded %d test images (flip TTA %s)", len(index), "on" if flip else "off")
    return {"index": torch.from_numpy(index), "pool": torch.cat(pools), "fc": torch.cat(fcs)}
