"""A torchmetrics Metric for the test protocol: accumulate test features, gather, evaluate.

Under DDP every rank embeds a stride of the protocol's images; a ``DistributedSampler`` (or the
datamodule's own split) pads the last stride by repeating images, so the gathered set holds
duplicates. :meth:`RetrievalMetric.compute` keeps one row per protocol index (the first in
gathered order), checks the identities/cameras/modalities it was given against the protocol, and
runs the same evaluation as the single-process engine, so the numbers do not depend on the
number of processes.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from tskd.core.errors import InputError
from tskd.data.protocol import TestProtocol
from tskd.metrics.search import search_features, summarize

STATES = ("pool", "fc", "pids", "cams", "modality", "index")


class RetrievalMetric(Metric):
    """Trial-averaged CMC / mAP / mINP of a :class:`TestProtocol` from streamed features.

    Args:
        protocol: The test images and searches; ``index`` values of :meth:`update` point into it.
        max_rank: CMC length (at least 20 for the summaries).
        rerank: Apply k-reciprocal re-ranking (an explicit, off-by-default option).
        **kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, protocol: TestProtocol, max_rank: int = 20, rerank: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.protocol = protocol
        self.max_rank = max_rank
        self.rerank = rerank
        for name in STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pool: torch.Tensor, fc: torch.Tensor, pids: torch.Tensor,
               cams: torch.Tensor, modality: torch.Tensor, index: torch.Tensor) -> None:
        """Add one batch: features (B, C), and (B,) identity, camera, modality, protocol index."""
        b = index.shape[0]
        for name, value in (("pool", pool), ("fc", fc), ("pids", pids), ("cams", cams),
                            ("modality", modality)):
            if value.shape[0] != b:
                raise InputError(f"RetrievalMetric.update: {name} has {value.shape[0]} rows "
                                   f"but index has {b}; pass one row per image")
        self.pool.append(pool.detach().float())
        self.fc.append(fc.detach().float())
        for name, value in (("pids", pids), ("cams", cams), ("modality", modality),
                            ("index", index)):
            getattr(self, name).append(value.detach().long())

    def forward(self, *args, **kwargs) -> None:
        """Accumulate only (as :meth:`update`): a partial test set has no meaningful metrics."""
        self.update(*args, **kwargs)

    def _check(self, index: np.ndarray, name: str, given: np.ndarray) -> None:
        expected = getattr(self.protocol, name)[index]
        bad = np.flatnonzero(given != expected)
        if len(bad):
            i = int(index[bad[0]])
            raise InputError(
                f"RetrievalMetric: image {i} ({self.protocol.paths[i]}) arrived with {name} "
                f"{int(given[bad[0]])} but the protocol says {int(expected[bad[0]])} "
                f"({len(bad)} such rows); the test loader and protocol are out of step"
            )

    def compute(self) -> list[dict]:
        """Summaries of every (setting, feature) (see :func:`tskd.metrics.search.summarize`)."""
        if isinstance(self.index, list) and not self.index:
            raise InputError("RetrievalMetric.compute() before any update(); run the test "
                               "loader through update first")
        index = dim_zero_cat(self.index).cpu().numpy()
        n = len(self.protocol.paths)
        if index.min() < 0 or index.max() >= n:
            raise InputError(f"RetrievalMetric: index {index.min()}..{index.max()} outside "
                               f"the protocol's 0..{n - 1}; the loader serves another test set")
        for name in ("pids", "cams", "modality"):
            self._check(index, name, dim_zero_cat(getattr(self, name)).cpu().numpy())
        keep, first = np.unique(index, return_index=True)  # one row per image: drop padding
        rows = torch.as_tensor(first, device=dim_zero_cat(self.fc).device)
        features = {"index": torch.as_tensor(keep), "pool": dim_zero_cat(self.pool)[rows],
                    "fc": dim_zero_cat(self.fc)[rows]}
        results = search_features(features, self.protocol, self.rerank, self.max_rank)
        return summarize(results, self.protocol)
