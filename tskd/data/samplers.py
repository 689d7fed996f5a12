"""Identity-aligned cross-modality batch sampler with its own DDP rank split.

A batch holds P identities and, for each, K visible and K infrared images drawn with replacement,
as B = P*K aligned slots ``(vis_idx, ir_idx, sample_seed)``: slot j belongs to identity
``ids[j // K]``, so the visible and infrared image of every slot share a label.

Distributed training: every rank builds the same *global* stream from a generator seeded by
``(seed, epoch)``. Each global batch draws P*world_size distinct identities without replacement
and rank r keeps the slice ``[r*P, (r+1)*P)``; so within a global step no identity is duplicated
across ranks and none is dropped. The sampler does its own split, so Lightning must not wrap it
(``Trainer(use_distributed_sampler=False)``); it exposes ``set_epoch`` where Lightning looks for
it (``batch_sampler.sampler.set_epoch``).

Epoch length (docs/method.md, "Batches"): G = floor(N / (P*K)) + 1 batches of P*K per
device-equivalent, with N = max(#visible, #infrared). With world_size ranks every rank yields
ceil(G / world_size) batches (the same count on every rank, so collective ops never hang).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from tskd.core.errors import DatasetError

Slot = tuple[int, int, int]


def _group(labels: np.ndarray, n_ids: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices sorted by label, each label's start offset and count."""
    return _group_rows(labels, np.arange(len(labels)), n_ids)


def _group_rows(labels: np.ndarray, rows: np.ndarray, n_ids: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_group` over the given ``rows`` only (their labels are >= 0)."""
    order = rows[np.argsort(labels[rows], kind="stable")]
    counts = np.bincount(labels[rows], minlength=n_ids)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def _as_labels(labels: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{name} labels must be a non-empty 1-D integer array, got shape "
                           f"{arr.shape} dtype {arr.dtype}; check the dataset's record lists")
    return arr.astype(np.int64)


class CrossModalityIdentitySampler(Sampler[list[Slot]]):
    """Yields lists of P*K ``(vis_idx, ir_idx, sample_seed)`` slots; use as ``batch_sampler``.

    Args:
        visible_labels: (N_v,) label of every visible training row, labels 0..n-1.
        infrared_labels: (N_i,) label of every infrared training row.
        num_ids: P, identities per batch on each rank (``data.num_ids``).
        num_pos: K, visible and infrared images per identity (``data.num_pos``).
        seed: Base seed; the stream of an epoch depends only on (seed, epoch, world_size).
        rank: This process's rank.
        world_size: Number of ranks.
        paired_only: Noisy or weak labels (``supervision``): draw only the identities that
            have labelled rows in both modalities, skip rows labelled -1 (not labelled yet),
            and base the epoch length on the labelled rows. False: every identity 0..n-1 must
            have both modalities (a clean split), as before.

    Raises:
        DatasetError: Labels are not 0..n-1, an identity lacks one modality, or there are
            fewer than P*world_size identities (with ``paired_only``: identities in both).
    """

    def __init__(self, visible_labels: Sequence[int] | np.ndarray,
                 infrared_labels: Sequence[int] | np.ndarray, num_ids: int = 8,
                 num_pos: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1,
                 paired_only: bool = False) -> None:
        super().__init__()
        vis = _as_labels(visible_labels, "visible")
        ir = _as_labels(infrared_labels, "infrared")
        if num_ids < 1 or num_pos < 1:
            raise DatasetError(f"data.num_ids={num_ids} and data.num_pos={num_pos} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        self.num_ids, self.num_pos = num_ids, num_pos
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.eligible: np.ndarray | None = None  # None: every identity 0..n-1 is drawn
        if paired_only:
            self._group_paired(vis, ir)
            return
        present = np.union1d(vis, ir)
        n_ids = int(present.max()) + 1
        if present.min() < 0 or len(present) != n_ids:
            missing = np.setdiff1d(np.arange(max(n_ids, 0)), present)[:5].tolist()
            raise DatasetError(f"training labels must be 0..n-1 without gaps; found min "
                               f"{present.min()}, max {present.max()}, missing {missing}...; "
                               "relabel identities consecutively")
        self.vis_rows, self.vis_start, self.vis_count = _group(vis, n_ids)
        self.ir_rows, self.ir_start, self.ir_count = _group(ir, n_ids)
        for name, counts in (("visible", self.vis_count), ("infrared", self.ir_count)):
            if (counts == 0).any():
                bad = np.flatnonzero(counts == 0)[:5].tolist()
                raise DatasetError(f"identities {bad} have no {name} image; every training "
                                   "identity needs both modalities; remove them from the split")
        if n_ids < num_ids * world_size:
            raise DatasetError(
                f"{n_ids} training identities cannot fill {num_ids} distinct ids x {world_size} "
                "devices per step; lower data.num_ids or the number of devices")
        self.n_ids = n_ids
        self._set_length(max(len(vis), len(ir)))

    def _set_length(self, n: int) -> None:
        """Epoch length from ``n`` = max(#visible, #infrared) rows the sampler may draw."""
        self.num_global_batches = n // (self.num_ids * self.num_pos) + 1  # G of docs/method.md
        self.num_batches = math.ceil(self.num_global_batches / self.world_size)  # per rank

    def _group_paired(self, vis: np.ndarray, ir: np.ndarray) -> None:
        """Noisy or weak labels: draw only identities that have rows in both modalities.

        Label -1 marks a row with no label yet (weak supervision before its first pseudo-labels);
        such rows are never drawn. A label class can vanish from one modality (a noisy draw, a
        pseudo-label nobody predicts any more): that identity is skipped, nothing shifts.
        """
        top = int(max(vis.max(), ir.max()))
        if top < 0:
            raise DatasetError("no training image has a label; check supervision.label_ratio")
        n_ids = top + 1
        vis_known, ir_known = np.flatnonzero(vis >= 0), np.flatnonzero(ir >= 0)
        self.vis_rows, self.vis_start, self.vis_count = _group_rows(vis, vis_known, n_ids)
        self.ir_rows, self.ir_start, self.ir_count = _group_rows(ir, ir_known, n_ids)
        self.eligible = np.flatnonzero((self.vis_count > 0) & (self.ir_count > 0))
        if len(self.eligible) < self.num_ids * self.world_size:
            raise DatasetError(
                f"only {len(self.eligible)} identities have labelled images in both modalities; "
                f"they cannot fill {self.num_ids} distinct ids x {self.world_size} devices per "
                "step; lower data.num_ids or the number of devices, or raise "
                "supervision.label_ratio")
        self.n_ids = n_ids
        self._set_length(max(len(vis_known), len(ir_known)))

    @property
    def sampler(self) -> CrossModalityIdentitySampler:
        """Itself: Lightning calls ``batch_sampler.sampler.set_epoch`` at every epoch start."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose stream ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def global_stream(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's slots of all ranks.

        Returns:
            int64 (num_batches, world_size*P*K, 3): columns vis_idx, ir_idx, sample_seed.
        """
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        slots = self.world_size * self.num_ids * self.num_pos
        # Seeds are base + a running slot counter (mod 2**63): unique within the epoch.
        base = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
        out = np.empty((self.num_batches, slots, 3), dtype=np.int64)
        for b in range(self.num_batches):
            if self.eligible is None:
                ids = rng.choice(self.n_ids, size=self.world_size * self.num_ids, replace=False)
            else:
                pick = rng.choice(len(self.eligible), size=self.world_size * self.num_ids,
                                  replace=False)
                ids = self.eligible[pick]
            ids = np.repeat(ids, self.num_pos)  # (slots,): slot j -> identity ids[j // K]
            v_off = rng.integers(0, self.vis_count[ids])  # with replacement, per slot
            i_off = rng.integers(0, self.ir_count[ids])
            out[b, :, 0] = self.vis_rows[self.vis_start[ids] + v_off]
            out[b, :, 1] = self.ir_rows[self.ir_start[ids] + i_off]
            counter = np.arange(b * slots, (b + 1) * slots, dtype=np.uint64)
            out[b, :, 2] = ((base + counter) % np.uint64(2**63)).astype(np.int64)
        return out

    def __iter__(self) -> Iterator[list[Slot]]:
        per_rank = self.num_ids * self.num_pos
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        for batch in self.global_stream():
            yield [(int(v), int(i), int(s)) for v, i, s in batch[lo:hi]]


# XOR-ed into the training slots' seeds: the prototype pass sees the same images with new draws
_FRESH_DRAW_MASK = 0x2545F4914F6CDD1D


class FreshDrawBatches(Sampler[list[Slot]]):
    """The first ``num_batches`` batches of an epoch's slots, with new augmentation seeds.

    The prototype pass (docs/method.md, "Prototypes") revisits exactly the slots this rank
    trained on in the epoch, but draws new augmentations, as the authors' second pass over the
    training loader does.

    Args:
        sampler: The training sampler (its seed, rank split and P x K are reused).
        epoch: The epoch whose slots to replay.
        num_batches: How many of its batches were trained (``limit_train_batches``).
    """

    def __init__(self, sampler: CrossModalityIdentitySampler, epoch: int,
                 num_batches: int) -> None:
        super().__init__()
        self.sampler, self.epoch = sampler, int(epoch)
        self.num_batches = min(int(num_batches), len(sampler))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[Slot]]:
        s = self.sampler
        per_rank = s.num_ids * s.num_pos
        lo, hi = s.rank * per_rank, (s.rank + 1) * per_rank
        for batch in s.global_stream(self.epoch)[: self.num_batches]:
            yield [(int(v), int(i), int(seed) ^ _FRESH_DRAW_MASK) for v, i, seed in batch[lo:hi]]
