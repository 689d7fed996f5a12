"""Self-mimic (SM): pull every feature towards its identity's prototype from the last epoch.

Every identity has one prototype per slot: visible view 1 (slot 0), visible view 2 (slot 1)
and infrared (slot 2). A prototype is the confidence-weighted mean of the pre-BN features ``f``
that identity produced in that slot during an epoch. :class:`PrototypeBank` accumulates the
weighted sums during the epoch and turns them into prototypes at its end (after an optional
cross-rank sum); the prototypes then stay fixed, without gradient, for the whole next epoch.

:class:`SelfMimicLoss` pulls each sample towards the prototype of its (identity, slot):
``l1`` (default, the related code) uses ``w_i * mean_c |f_ic - p_c|``; ``l2`` (the paper's
formula) uses ``w_i * sum_c (f_ic - p_c)^2``. Samples whose prototype does not exist yet are
left alone -- the related code pulled them towards the zero-initialised prototype, a bug we
avoid -- and the loss is the mean over the samples that do have one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["PrototypeBank", "SelfMimicLoss"]


class PrototypeBank(nn.Module):
    """Per-(identity, slot) prototypes plus the running weighted sums that produce them.

    All state lives in registered buffers (``prototypes``, ``valid``, ``wsum``,
    ``weight_sum``), so it moves with the module's device and is saved in checkpoints,
    including a half-accumulated epoch.

    Args:
        num_ids: Number of training identities.
        num_slots: Slots per identity (3: visible view 1, visible view 2, infrared).
        dim: Feature dimension (required).
    """

    def __init__(self, num_ids: int, num_slots: int = 3, dim: int | None = None) -> None:
        super().__init__()
        if dim is None or dim < 1 or num_ids < 1 or num_slots < 1:
            raise ValueError(
                f"PrototypeBank needs positive num_ids, num_slots and dim, got {num_ids}, "
                f"{num_slots}, {dim}; pass dim=<feature size of the network>"
            )
        self.num_ids, self.num_slots, self.dim = num_ids, num_slots, dim
        self.register_buffer("prototypes", torch.zeros(num_ids, num_slots, dim))
        self.register_buffer("valid", torch.zeros(num_ids, num_slots, dtype=torch.bool))
        self.register_buffer("wsum", torch.zeros(num_ids, num_slots, dim))  # sum_i w_i f_i
        self.register_buffer("weight_sum", torch.zeros(num_ids, num_slots))  # sum_i w_i

    def extra_repr(self) -> str:
        return f"num_ids={self.num_ids}, num_slots={self.num_slots}, dim={self.dim}"

    @property
    def has_prototypes(self) -> bool:
        """True once at least one (identity, slot) prototype exists."""
        return bool(self.valid.any())

    def flat_index(self, labels: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Row index ``label * num_slots + slot`` into the flattened (ids*slots) tables."""
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_ids):
            raise ValueError(
                f"labels must lie in [0, {self.num_ids}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]; the bank was built for "
                f"{self.num_ids} identities"
            )
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= self.num_slots):
            raise ValueError(
                f"slots must lie in [0, {self.num_slots}), got range "
                f"[{int(slots.min())}, {int(slots.max())}]; use 0/1 for the visible views and "
                "2 for infrared"
            )
        return labels.long() * self.num_slots + slots.long()

    @torch.no_grad()
    def accumulate(
        self,
        f: torch.Tensor,
        labels: torch.Tensor,
        slots: torch.Tensor,
        weights: torch.Tensor,
    ) -> None:
        """Add ``w_i * f_i`` and ``w_i`` to the running sums of each sample's (identity, slot).

        Args:
            f: Features (M, C), detached (no gradient is recorded either way).
            labels: Identities (M,).
            slots: Slot of each sample (M,): 0 visible view 1, 1 visible view 2, 2 infrared.
            weights: Confidences (M,).
        """
        m = f.shape[0]
        if f.dim() != 2 or f.shape[1] != self.dim:
            raise ValueError(
                f"features must be (M, {self.dim}), got {tuple(f.shape)}; build the bank with "
                "the network's feature size"
            )
        if labels.shape != (m,) or slots.shape != (m,) or weights.shape != (m,):
            raise ValueError(
                f"labels, slots and weights must all be ({m},), got {tuple(labels.shape)}, "
                f"{tuple(slots.shape)}, {tuple(weights.shape)}"
            )
        idx = self.flat_index(labels, slots)  # (M,)
        w = weights.to(self.wsum.dtype)
        self.wsum.view(-1, self.dim).index_add_(0, idx, f.to(self.wsum.dtype) * w[:, None])
        self.weight_sum.view(-1).index_add_(0, idx, w)

    @torch.no_grad()
    def finalize(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Turn the epoch's sums into prototypes and reset the sums.

        Args:
            reduce: Optional callable summing a tensor over DDP ranks; applied to both running
                sums first so every rank ends with the same prototypes.

        (identity, slot) pairs with a positive weight sum get ``wsum / weight_sum`` and become
        valid; pairs not seen this epoch (or seen only with zero weight) keep their previous
        prototype and validity.
        """
        wsum, weight_sum = self.wsum, self.weight_sum
        if reduce is not None:
            wsum, weight_sum = reduce(wsum), reduce(weight_sum)
        seen = weight_sum > 0  # (ids, slots)
        new = wsum / weight_sum.clamp(min=torch.finfo(weight_sum.dtype).tiny)[..., None]
        self.prototypes.copy_(torch.where(seen[..., None], new, self.prototypes))
        self.valid |= seen
        self.wsum.zero_()
        self.weight_sum.zero_()


class SelfMimicLoss(nn.Module):
    """Confidence-weighted distance of each sample to its fixed (identity, slot) prototype.

    Args:
        metric: ``"l1"`` (mean absolute difference over channels) or ``"l2"`` (sum of squared
            differences over channels).
    """

    def __init__(self, metric: str = "l1") -> None:
        super().__init__()
        if metric not in ("l1", "l2"):
            raise ValueError(f"self-mimic metric must be 'l1' or 'l2', got {metric!r}")
        self.metric = metric

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}"

    def forward(
        self,
        f: torch.Tensor,
        labels: torch.Tensor,
        slots: torch.Tensor,
        weights: torch.Tensor,
        bank: PrototypeBank,
    ) -> torch.Tensor:
        """Compute the self-mimic loss.

        Args:
            f: Features (M, C) with gradient.
            labels: Identities (M,).
            slots: Slots (M,) as in :meth:`PrototypeBank.accumulate`.
            weights: Confidences (M,), treated as constants.
            bank: The prototype bank (prototypes receive no gradient).

        Returns:
            Scalar: sum over samples with a valid prototype of ``w_i * d_i`` divided by the
            number of such samples. When none has a prototype the result is ``0 * f.sum()``,
            a zero that keeps the graph connected (needed by DDP) and pulls nothing.
        """
        m = f.shape[0]
        if f.dim() != 2 or weights.shape != (m,) or labels.shape != (m,) or slots.shape != (m,):
            raise ValueError(
                f"f must be (M, C) with labels, slots and weights (M,), got {tuple(f.shape)}, "
                f"{tuple(labels.shape)}, {tuple(slots.shape)}, {tuple(weights.shape)}"
            )
        idx = bank.flat_index(labels, slots)  # (M,)
        has = bank.valid.view(-1)[idx]  # (M,) bool
        if not bool(has.any()):
            return f.sum() * 0.0
        protos = bank.prototypes.view(-1, bank.dim)[idx[has]].detach().to(f.dtype)  # (V, C)
        diff = f[has] - protos  # (V, C)
        if self.metric == "l1":
            dist = diff.abs().mean(1)  # (V,)
        else:
            dist = diff.pow(2).sum(1)  # (V,)
        w = weights.detach().to(f.dtype)[has]
        return (w * dist).sum() / has.sum()
