"""Batch-hard triplet loss on Euclidean feature distances.

For every anchor the hardest positive (farthest sample with the same identity) and the hardest
negative (closest sample with another identity) are mined inside the batch, and

    L_Tri = mean_a relu(d(a, p_hard) - d(a, n_hard) + margin)

with d the plain (not squared) Euclidean distance. By default mining runs over the whole
3-view batch (visible view 1, visible view 2, infrared), so positives and negatives may come
from either modality, as in the authors' related code.

``per_modality=True`` is our reading of the paper's "one triplet per modality": the batch is
split into a visible group (modality 0, both views) and an infrared group (modality 1); each
anchor mines its positive and negative only inside its own group, each group yields the mean
loss over its anchors, and the result is the mean over the groups. No cross-modal pairs are
used in that variant.
"""

from __future__ import annotations

import torch
from torch import nn

from tskd.losses.host_reads import host_copy, to_device

__all__ = ["BatchHardTriplet", "euclidean_dist"]


def euclidean_dist(feats: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (N, N) of the rows of ``feats`` (N, C).

    The squared distance is clamped at 1e-12 before the square root so that the gradient stays
    finite for coincident points (the clamp passes no gradient there). Half-precision input is
    computed in float32 with autocast off: the |a|^2 + |b|^2 - 2ab expansion cancels badly in
    16-bit arithmetic.
    """
    with torch.autocast(device_type=feats.device.type, enabled=False):
        if feats.dtype in (torch.float16, torch.bfloat16):
            feats = feats.float()
        sq = feats.pow(2).sum(1)  # (N,)
        d2 = sq[:, None] + sq[None, :] - 2.0 * feats @ feats.t()  # (N, N)
        return d2.clamp(min=1e-12).sqrt()


def _valid_anchors(labels: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """(N,) bool on the host: anchors with a positive and a negative in their mining scope.

    Depends on the labels (and groups) only, not on the features, so it is computed from the
    host copy. ``groups`` None: the whole batch is one scope.
    """
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]  # (N, N)
    scope = (torch.ones(n, n, dtype=torch.bool) if groups is None
             else groups[:, None] == groups[None, :])
    pos = same & ~torch.eye(n, dtype=torch.bool) & scope
    neg = ~same & scope
    return pos.any(1) & neg.any(1)


def _hard_mining_hinge(
    dist: torch.Tensor, labels: torch.Tensor, scope: torch.Tensor | None, margin: float
) -> torch.Tensor:
    """Per-anchor hinge (N,) of the hardest positive and negative inside ``scope``.

    Args:
        dist: (N, N) distances.
        labels: (N,) identities.
        scope: (N, N) bool; True where sample j may be mined for anchor i (None: all).
        margin: Triplet margin.

    Anchors without a positive or a negative get a meaningless value; the caller selects the
    valid ones. One call serves every modality group at once: with a same-group scope each
    anchor's row sees exactly the samples of its group.
    """
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]  # (N, N)
    not_self = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    pos = same & not_self
    neg = ~same
    if scope is not None:
        pos, neg = pos & scope, neg & scope
    # masked entries are pushed out of the max/min instead of being indexed out, so one
    # vectorised reduction serves every anchor
    big = torch.finfo(dist.dtype).max
    d_ap = dist.masked_fill(~pos, -big).amax(1)  # (N,)
    d_an = dist.masked_fill(~neg, big).amin(1)  # (N,)
    return torch.relu(d_ap - d_an + margin)


class BatchHardTriplet(nn.Module):
    """Batch-hard triplet loss with Euclidean distances.

    Args:
        margin: Hinge margin (default 0.3).
        per_modality: Mine each anchor only inside its own modality group and average the
            per-modality losses (see the module docstring); requires ``modality`` in forward.
    """

    def __init__(self, margin: float = 0.3, per_modality: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"triplet margin must be >= 0, got {margin}; the default is 0.3")
        self.margin = float(margin)
        self.per_modality = bool(per_modality)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, per_modality={self.per_modality}"

    def forward(
        self,
        feats: torch.Tensor,
        labels: torch.Tensor,
        modality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            feats: Features, shape (N, C).
            labels: Identities, shape (N,).
            modality: Per-sample modality (N,), 0 visible / 1 infrared. Required when
                ``per_modality`` is True, ignored otherwise.

        Returns:
            Scalar loss: mean over the anchors that have at least one positive (another
            sample of the same identity) and one negative in their mining scope; anchors
            without either are skipped.

        Raises:
            ValueError: On shape mismatch, a missing ``modality`` in per-modality mode, or when
                no anchor has both a positive and a negative.
        """
        if feats.dim() != 2 or labels.shape != (feats.shape[0],):
            raise ValueError(
                f"feats must be (N, C) and labels (N,), got {tuple(feats.shape)} and "
                f"{tuple(labels.shape)}; pass one identity per feature row"
            )
        n = feats.shape[0]
        if self.per_modality and (modality is None or modality.shape != (n,)):
            raise ValueError(
                "BatchHardTriplet(per_modality=True) needs modality of shape "
                f"({n},), got {None if modality is None else tuple(modality.shape)}; pass 0 "
                "for visible and 1 for infrared samples"
            )
        dist = euclidean_dist(feats)  # (N, N)
        if not self.per_modality:
            host_labels = host_copy(labels)
            valid = _valid_anchors(host_labels, None)
            if not bool(valid.any()):
                raise ValueError(self._no_anchor_msg(host_labels, "the batch"))
            hinge = _hard_mining_hinge(dist, labels, None, self.margin)
            rows = to_device(valid.nonzero().squeeze(1), feats.device)
            return hinge[rows].sum() / rows.shape[0]
        # one host copy of labels and modalities, one mining over every group (each anchor
        # mines inside its own modality), then each group's mean over its valid anchors
        host = host_copy(torch.stack([labels.long(), modality.long()]))
        host_labels, host_groups = host[0], host[1]
        valid = _valid_anchors(host_labels, host_groups)
        if not bool(valid.any()):
            raise ValueError(self._no_anchor_msg(host_labels, "any modality group"))
        hinge = _hard_mining_hinge(dist, labels, modality[:, None] == modality[None, :],
                                   self.margin)
        per_group = []
        for m in torch.unique(host_groups).tolist():
            rows = (valid & (host_groups == m)).nonzero().squeeze(1)
            if len(rows):
                per_group.append(hinge[to_device(rows, feats.device)].sum() / len(rows))
        return torch.stack(per_group).mean()

    @staticmethod
    def _no_anchor_msg(labels: torch.Tensor, where: str) -> str:
        ids = sorted(set(labels.tolist()))
        return (
            f"no valid triplet anchor in {where}: every anchor needs another sample of its "
            f"identity and a sample of a different identity (identities {ids[:20]}); sample "
            "at least 2 identities with at least 2 images each per batch"
        )
