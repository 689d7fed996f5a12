"""The code paths issue 12's optimisations replaced, kept here only to measure against.

Each is a copy of the project's code before the change (commit 0e862d2), reduced to what
``benchmarks/optimisations.py`` and ``tests/test_optimisations.py`` need to run the old and the
new form side by side on the same input (it lives with the test helpers: a benchmark may import
a test helper, a test never imports a benchmark):

- the three losses with their host synchronisations (``int(valid.sum())``, boolean-mask
  selections, ``torch.unique`` on the device and values read from its output, four range reads
  in ``PrototypeBank.flat_index``) and the per-group mining loop of the per-modality triplet;
- the loaders without persistent workers (``persistent_workers=False``);
- the float32 test item (what the test loader ships from its workers; unchanged in the project,
  compared here with a uint8 item to size what shipping uint8 would save).

Nothing in ``tskd`` imports this file.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from tskd.data.datamodule import ReIDDataModule
from tskd.losses.mmd import MutualDistillationLoss
from tskd.losses.self_mimic import INFRARED_SLOT, PrototypeBank, SelfMimicLoss
from tskd.losses.triplet import BatchHardTriplet, euclidean_dist


# ---------------------------------------------------------------------------- losses
def _hard_mining_loss(dist, labels, scope, margin):
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    pos = same & not_self & scope
    neg = ~same & scope
    valid = pos.any(1) & neg.any(1)
    big = torch.finfo(dist.dtype).max
    d_ap = dist.masked_fill(~pos, -big).amax(1)
    d_an = dist.masked_fill(~neg, big).amin(1)
    hinge = torch.relu(d_ap - d_an + margin)[valid]
    return hinge.sum(), int(valid.sum())


class OldTriplet(BatchHardTriplet):
    """``BatchHardTriplet.forward`` before issue 12."""

    def forward(self, feats, labels, modality=None):
        if feats.dim() != 2 or labels.shape != (feats.shape[0],):
            raise ValueError("feats must be (N, C) and labels (N,)")
        dist = euclidean_dist(feats)
        n = feats.shape[0]
        if not self.per_modality:
            scope = torch.ones(n, n, dtype=torch.bool, device=feats.device)
            total, count = _hard_mining_loss(dist, labels, scope, self.margin)
            if count == 0:
                raise ValueError(self._no_anchor_msg(labels, "the batch"))
            return total / count
        if modality is None or modality.shape != (n,):
            raise ValueError("BatchHardTriplet(per_modality=True) needs modality")
        per_group = []
        for m in torch.unique(modality).tolist():
            member = modality == m
            scope = member[:, None] & member[None, :]
            total, count = _hard_mining_loss(dist, labels, scope, self.margin)
            if count > 0:
                per_group.append(total / count)
        if not per_group:
            raise ValueError(self._no_anchor_msg(labels, "any modality group"))
        return torch.stack(per_group).mean()


def old_flat_index(bank: PrototypeBank, labels, slots):
    """``PrototypeBank.flat_index`` before issue 12: four device reads for the range check."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= bank.num_ids):
        raise ValueError(f"labels must lie in [0, {bank.num_ids})")
    if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= bank.num_slots):
        raise ValueError(f"slots must lie in [0, {bank.num_slots})")
    return labels.long() * bank.num_slots + slots.long()


class OldSelfMimic(SelfMimicLoss):
    """``SelfMimicLoss.forward`` before issue 12."""

    def forward(self, f, labels, slots, weights, bank):
        m = f.shape[0]
        idx = old_flat_index(bank, labels, slots)
        has = bank.valid.view(-1)[idx]
        if not bool(has.any()):
            return f.sum() * 0.0
        protos = bank.prototypes.view(-1, bank.dim)[idx[has]].detach().to(f.dtype)
        diff = f[has] - protos
        dist = diff.abs().mean(1) if self.metric == "l1" else diff.pow(2).sum(1)
        w = weights.detach().to(f.dtype)[has]
        if self.form == "mean":
            return (w * dist).sum() / has.sum()
        n = int((slots == INFRARED_SLOT).sum())
        if n * 3 != m:
            raise ValueError("sm_form='code' needs the aligned 3-view layout")
        half = torch.where(slots[has] == INFRARED_SLOT, 1.0, 0.5).to(f.dtype)
        return (half * w * dist).sum() / n


class OldMutualDistillation(MutualDistillationLoss):
    """``MutualDistillationLoss.forward`` before issue 12 (grouping on the device)."""

    def forward(self, f_vis1, f_vis2, f_ir, labels):
        ids, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if bool((counts == counts[0]).all()):
            p, k = ids.numel(), int(counts[0])
            order = torch.argsort(inverse, stable=True)
            fir = f_ir[order].reshape(p, k, -1)
            per_view = [self._both_ways(fv[order].reshape(p, k, -1), fir)
                        for fv in (f_vis1, f_vis2)]
        else:
            per_view = [
                torch.stack([self._both_ways(fv[inverse == j][None], f_ir[inverse == j][None])[0]
                             for j in range(ids.numel())])
                for fv in (f_vis1, f_vis2)
            ]
        return self._combine(per_view)


# ---------------------------------------------------------------------------- loaders
def old_train_dataloader(dm: ReIDDataModule) -> DataLoader:
    """``ReIDDataModule.train_dataloader`` before issue 12: workers restart every epoch."""
    return DataLoader(dm._train_set(), batch_sampler=dm._train_sampler(),
                      num_workers=dm.num_workers, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())
