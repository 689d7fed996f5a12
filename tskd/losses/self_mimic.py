"""Self-mimic (SM): pull every feature towards its identity's prototype from the last epoch.

Every identity has one prototype per slot: visible view 1 (slot 0), visible view 2 (slot 1)
and infrared (slot 2). :class:`PrototypeBank` holds them. After each post-warm-up epoch the
features of that epoch's slots are summed per (identity, slot), weighted by their confidences,
and the sums become prototypes (docs/method.md, "Prototypes", Eq. 8-9 of the paper):

- ``norm="count"`` (default, the authors' code): ``O[c] = sum_i w_i f_i / count_c``, with
  ``count_c`` the number of slots of identity c in the pass (repeats included);
- ``norm="weight"``: ``O[c] = sum_i w_i f_i / sum_i w_i``, a weighted mean.

Identities not seen keep their previous prototype. The prototypes live in buffers (identical on
all ranks, saved in checkpoints). The running sums do **not**: DDP broadcasts every buffer from
rank 0 before each forward, which would silently replace the other ranks' sums with rank 0's
whenever the sums are filled from the training forward. They are plain tensors, reduced across
ranks only in :meth:`PrototypeBank.finalize`, and saved in checkpoints as the bank's extra state
so a resumed run continues bit-exactly.

:class:`SelfMimicLoss` pulls each sample towards the prototype of its (identity, slot), with
``d_i`` = ``l1``: mean over channels of ``|f_ic - p_c|`` (the authors' code) or ``l2``: sum over
channels of ``(f_ic - p_c)^2`` (the paper's squared L2). Two forms of the average:

- ``form="code"`` (default): ``(1/n) sum_i [1/2 (w1_i d1_i + w2_i d2_i) + wr_i dr_i]`` over the
  n aligned slots, so the infrared term weighs as much as the two visible views together;
- ``form="mean"``: the plain mean of ``w_i d_i`` over all samples that have a prototype.

Samples whose prototype does not exist yet contribute nothing (the authors' code pulled them
towards a zero-initialised prototype, which we avoid); ``code`` still divides by n.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tskd.losses.host_reads import host_copy, to_device

__all__ = ["PROTOTYPE_NORMS", "SM_FORMS", "SM_METRICS", "PrototypeBank", "SelfMimicLoss"]

PROTOTYPE_NORMS = ("count", "weight")
SM_FORMS = ("code", "mean")
SM_METRICS = ("l1", "l2")
INFRARED_SLOT = 2
_SUMS = ("wsum", "weight_sum", "count")


class PrototypeBank(nn.Module):
    """Per-(identity, slot) prototypes plus the running sums that produce them.

    ``prototypes`` (ids, slots, C) and ``valid`` (ids, slots) are buffers; the running sums
    ``wsum`` (sum of w f), ``weight_sum`` (sum of w) and ``count`` (number of samples) are plain
    tensors kept out of DDP's buffer broadcast and saved through the module's extra state.

    Args:
        num_ids: Number of training identities.
        num_slots: Slots per identity (3: visible view 1, visible view 2, infrared).
        dim: Feature dimension (required).
        norm: ``"count"`` or ``"weight"``, the prototype's denominator (module docstring).
    """

    def __init__(self, num_ids: int, num_slots: int = 3, dim: int | None = None,
                 norm: str = "count") -> None:
        super().__init__()
        if dim is None or dim < 1 or num_ids < 1 or num_slots < 1:
            raise ValueError(
                f"PrototypeBank needs positive num_ids, num_slots and dim, got {num_ids}, "
                f"{num_slots}, {dim}; pass dim=<feature size of the network>"
            )
        if norm not in PROTOTYPE_NORMS:
            raise ValueError(f"loss.prototype_norm={norm!r}: use one of {PROTOTYPE_NORMS}")
        self.num_ids, self.num_slots, self.dim, self.norm = num_ids, num_slots, dim, norm
        self.register_buffer("prototypes", torch.zeros(num_ids, num_slots, dim))
        self.register_buffer("valid", torch.zeros(num_ids, num_slots, dtype=torch.bool))
        self._reset_sums(torch.device("cpu"))

    def _reset_sums(self, device: torch.device) -> None:
        shape = (self.num_ids, self.num_slots)
        self.wsum = torch.zeros(*shape, self.dim, device=device)
        self.weight_sum = torch.zeros(shape, device=device)
        self.count = torch.zeros(shape, device=device)

    def _sums_to(self, device: torch.device) -> None:
        # plain tensors do not follow Module.to(); move them where the features are
        for name in _SUMS:
            t = getattr(self, name)
            if t.device != device:
                setattr(self, name, t.to(device))

    def get_extra_state(self) -> dict:
        """The running sums, so a checkpoint taken mid-epoch resumes exactly."""
        return {name: getattr(self, name).detach().clone() for name in _SUMS}

    def set_extra_state(self, state: dict) -> None:
        device = self.prototypes.device
        for name in _SUMS:
            setattr(self, name, state[name].to(device=device, dtype=torch.float32).clone())

    def extra_repr(self) -> str:
        return (f"num_ids={self.num_ids}, num_slots={self.num_slots}, dim={self.dim}, "
                f"norm={self.norm!r}")

    def flat_index(self, labels: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Row index ``label * num_slots + slot`` into the flattened (ids*slots) tables.

        The range check reads one host copy of labels and slots (one synchronisation on a GPU).
        """
        host = host_copy(torch.cat([labels.reshape(-1).long(), slots.reshape(-1).long()]))
        self.check_range(host[: labels.numel()], host[labels.numel():])
        return self.unchecked_index(labels, slots)

    def unchecked_index(self, labels: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """:meth:`flat_index` without the range check (callers check a host copy themselves)."""
        return labels.long() * self.num_slots + slots.long()

    def check_range(self, labels: torch.Tensor, slots: torch.Tensor) -> None:
        """Raises on labels or slots outside the bank; call with host (CPU) tensors."""
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

    @torch.no_grad()
    def accumulate(
        self,
        f: torch.Tensor,
        labels: torch.Tensor,
        slots: torch.Tensor,
        weights: torch.Tensor,
    ) -> None:
        """Add ``w_i * f_i``, ``w_i`` and 1 to the running sums of each sample's (identity, slot).

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
        self._sums_to(f.device)
        w = weights.to(self.wsum.dtype)
        self.wsum.view(-1, self.dim).index_add_(0, idx, f.to(self.wsum.dtype) * w[:, None])
        self.weight_sum.view(-1).index_add_(0, idx, w)
        self.count.view(-1).index_add_(0, idx, torch.ones_like(w))

    @torch.no_grad()
    def finalize(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Turn the epoch's sums into prototypes and reset the sums.

        Args:
            reduce: Optional callable summing a tensor over DDP ranks; applied to the running
                sums first so every rank ends with the same prototypes.

        (identity, slot) pairs seen this epoch (``count > 0`` for ``norm="count"``, a positive
        weight sum for ``norm="weight"``) get new prototypes and become valid; the others keep
        their previous prototype and validity.
        """
        device = self.prototypes.device
        self._sums_to(device)
        wsum, weight_sum, count = self.wsum, self.weight_sum, self.count
        if reduce is not None:
            wsum, weight_sum, count = reduce(wsum), reduce(weight_sum), reduce(count)
        denom = count if self.norm == "count" else weight_sum
        seen = denom > 0  # (ids, slots)
        new = wsum / denom.clamp(min=torch.finfo(denom.dtype).tiny)[..., None]
        self.prototypes.copy_(torch.where(seen[..., None], new, self.prototypes))
        self.valid |= seen
        self._reset_sums(device)


class SelfMimicLoss(nn.Module):
    """Confidence-weighted distance of each sample to its fixed (identity, slot) prototype.

    Args:
        metric: ``"l1"`` (mean absolute difference over channels) or ``"l2"`` (sum of squared
            differences over channels).
        form: ``"code"`` or ``"mean"`` (module docstring).
    """

    def __init__(self, metric: str = "l1", form: str = "code") -> None:
        super().__init__()
        if metric not in SM_METRICS:
            raise ValueError(f"loss.sm_metric={metric!r}: use one of {SM_METRICS}")
        if form not in SM_FORMS:
            raise ValueError(f"loss.sm_form={form!r}: use one of {SM_FORMS}")
        self.metric, self.form = metric, form

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, form={self.form!r}"

    def forward(
        self,
        f: torch.Tensor,
        labels: torch.Tensor,
        slots: torch.Tensor,
        weights: torch.Tensor,
        bank: PrototypeBank,
    ) -> torch.Tensor:
        """Compute the self-mimic loss (without ``sm_w``).

        Args:
            f: Features (M, C) with gradient.
            labels: Identities (M,).
            slots: Slots (M,) as in :meth:`PrototypeBank.accumulate`; ``code`` needs the
                aligned layout (as many samples in each slot).
            weights: Confidences (M,), treated as constants.
            bank: The prototype bank (prototypes receive no gradient).

        Returns:
            Scalar (module docstring). When no sample has a prototype the result is
            ``0 * f.sum()``, a zero that keeps the graph connected (needed by DDP).
        """
        m = f.shape[0]
        if f.dim() != 2 or weights.shape != (m,) or labels.shape != (m,) or slots.shape != (m,):
            raise ValueError(
                f"f must be (M, C) with labels, slots and weights (M,), got {tuple(f.shape)}, "
                f"{tuple(labels.shape)}, {tuple(slots.shape)}, {tuple(weights.shape)}"
            )
        # One host copy of labels, slots and "has a prototype" (the step's only synchronisation
        # in this loss on a GPU): the range check, the layout check and the rows that have a
        # prototype all come from it. Gathering those rows selects the same elements in the same
        # order as a boolean mask would, without the mask's own synchronisation.
        idx = bank.unchecked_index(labels, slots)  # (M,)
        valid = bank.valid.view(-1)
        has = valid[idx.clamp(0, valid.numel() - 1)]  # (M,); out-of-range rows raise below
        host = host_copy(torch.stack([labels.long(), slots.long(), has.long()]))
        bank.check_range(host[0], host[1])
        host_has = host[2].bool()
        n = int((host[1] == INFRARED_SLOT).sum())  # aligned slots: one infrared sample each
        if not bool(host_has.any()):
            return f.sum() * 0.0
        rows = to_device(host_has.nonzero().squeeze(1), f.device)  # (V,)
        protos = bank.prototypes.view(-1, bank.dim)[idx[rows]].detach().to(f.dtype)  # (V, C)
        diff = f[rows] - protos  # (V, C)
        if self.metric == "l1":
            dist = diff.abs().mean(1)  # (V,)
        else:
            dist = diff.pow(2).sum(1)  # (V,)
        w = weights.detach().to(f.dtype)[rows]
        if self.form == "mean":
            return (w * dist).sum() / has.sum()
        if n * 3 != m:
            raise ValueError(
                f"sm_form='code' needs the aligned 3-view layout (n view-1, n view-2, n infrared "
                f"samples), got {m} samples with {n} infrared; use loss.sm_form=mean otherwise"
            )
        half = torch.where(slots[rows] == INFRARED_SLOT, 1.0, 0.5).to(f.dtype)  # (V,)
        return (half * w * dist).sum() / n
