"""DART's robust triplet loss for noisy correspondences (``RobustTripletLoss_final``, CVPR 2022).

An optional extension under noisy labels, not part of TSKD (SUPERVISION.md). With noisy labels
a "positive" may be another identity (a false positive) and a "negative" the same one (a false
negative). Every sample has a confidence w (the GMM posterior of its label being clean); it is
*confident* when w >= threshold (DART: 0.5). Only confident anchors contribute. For an anchor i
with label y_i, p is a random positive (same label, not i) and n the hardest (closest)
negative, d the Euclidean distance, and the per-anchor loss is relu(d_ap - d_an + margin) with:

- p confident, n confident, or n unconfident but not a false negative: the plain triplet,
  d_ap = d(i, p), d_an = d(i, n).
- p confident, n unconfident and a false negative (the classifier predicts y_i for n):
  d_ap = (d(i, p) + d(i, n)) / 2, d_an = d(i, n'), n' the closest confident negative.
- p unconfident, and n confident or not a false negative: d_ap = d(i, p'), p' a random
  confident positive (not i), and d_an = (d(i, p) + d(i, n)) / 2.
- p and n unconfident and n a false negative: the roles swap, relu(d(i, n) - d(i, p) + margin).

The loss is the mean over the confident anchors; 0 when there are none.

Inputs: DART calls it on ``cat(visible view 1, visible view 2, infrared)`` rows with labels
``cat(label1, label1, label2)``, confidences ``cat(probV_1, probV_2, probI)``, the pooled
(pre-BN) features ``x_pool`` and the classifier logits: exactly tskd's [view1; view2; infrared]
batch, so feats, labels, modality, w and logits pass through row for row.

Deviations: DART redraws p' at most 5 times and walks at most 10 ranks for n' (guards against
endless loops) and then keeps whatever it last drew; here p' is drawn uniformly from the
confident positives and n' is the closest confident negative, falling back to p (resp. n) when
none exists. ``positive="hardest"`` (our option) takes the farthest positive instead of a random
one (and the farthest confident one for p'); with every sample confident it is then exactly
:class:`~tskd.losses.triplet.BatchHardTriplet`. ``per_modality`` mines as BatchHardTriplet's.
"""

from __future__ import annotations

import torch
from torch import nn

from tskd.losses.host_reads import host_copy, to_device
from tskd.losses.triplet import BatchHardTriplet, euclidean_dist

__all__ = ["RobustTriplet"]

POSITIVE_CHOICES = ("random", "hardest")


def _pick(mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the floor(u * k)-th True column of ``mask`` (N, N) in index order, k the row's
    count (a uniform draw for u ~ U[0, 1)); 0 for rows without any."""
    k = mask.sum(1)
    r = (u * k).floor().long().clamp(max=(k - 1).clamp(min=0))
    hit = mask & (mask.long().cumsum(1) - 1 == r[:, None])
    return hit.long().argmax(1)


class RobustTriplet(nn.Module):
    """DART's robust triplet loss (see the module docstring).

    Args:
        margin: Hinge margin (DART: 0.3).
        threshold: Confidence threshold; w >= threshold is confident (DART: 0.5).
        positive: "random" (DART) or "hardest" (batch-hard positives).
        per_modality: Mine each anchor only inside its own modality group and average the
            groups' losses, as BatchHardTriplet(per_modality=True).
    """

    def __init__(self, margin: float = 0.3, threshold: float = 0.5, positive: str = "random",
                 per_modality: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"triplet margin must be >= 0, got {margin}; DART uses 0.3")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"confidence threshold must lie in [0, 1], got {threshold}; "
                             "DART uses 0.5")
        if positive not in POSITIVE_CHOICES:
            raise ValueError(f"positive must be one of {POSITIVE_CHOICES}, got {positive!r}")
        self.margin, self.threshold = float(margin), float(threshold)
        self.positive, self.per_modality = positive, bool(per_modality)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, threshold={self.threshold}, positive={self.positive}, "
                f"per_modality={self.per_modality}")

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
                w: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            feats: Features (N, C).
            labels: Training (possibly noisy) labels (N,); never the true labels.
            modality: (N,) 0 visible / 1 infrared (used by ``per_modality``).
            w: Confidences (N,) in [0, 1].
            logits: Classifier logits (N, K); their argmax flags false negatives.
            generator: CPU generator for the random positives; None uses torch's global one.
                Random mode draws ``torch.rand((N, 2))`` once per call: column 0 picks p,
                column 1 picks p' (see :func:`_pick`).

        Returns:
            Scalar loss; 0 (connected to ``feats``) when no anchor is confident.

        Raises:
            ValueError: On shape mismatch, or when no anchor has a positive and a negative.
        """
        n = feats.shape[0]
        shapes = [tuple(t.shape) for t in (feats, labels, modality, w, logits)]
        if (feats.dim() != 2 or shapes[1:4] != [(n,)] * 3 or logits.dim() != 2
                or logits.shape[0] != n):
            raise ValueError(f"RobustTriplet needs feats (N, C), labels, modality and w (N,) and "
                             f"logits (N, K), got shapes {shapes}")
        host = host_copy(torch.stack([labels.long(), modality.long(),
                                      (w.detach() >= self.threshold).long()]))
        h_labels, h_groups, h_conf = host[0], host[1], host[2].bool()
        same = h_labels[:, None] == h_labels[None, :]
        scope = (h_groups[:, None] == h_groups[None, :] if self.per_modality
                 else torch.ones(n, n, dtype=torch.bool))
        pos = same & ~torch.eye(n, dtype=torch.bool) & scope
        neg = ~same & scope
        pos_conf = pos & h_conf[None, :]  # candidates for p'
        valid = pos.any(1) & neg.any(1)
        if not bool(valid.any()):
            raise ValueError(BatchHardTriplet._no_anchor_msg(h_labels, "the mining scope"))
        anchors = valid & h_conf
        if not bool(anchors.any()):
            return feats.float().sum() * 0.0
        dev = feats.device
        dist = euclidean_dist(feats)  # (N, N)
        big = torch.finfo(dist.dtype).max
        d_pos, d_neg = to_device(pos, dev), to_device(neg, dev)
        d_pos_conf = to_device(pos_conf, dev)
        conf = to_device(h_conf, dev)
        if self.positive == "random":
            u = torch.rand((n, 2), generator=generator)
            p = _pick(pos, u[:, 0])
            p_new = torch.where(pos_conf.any(1), _pick(pos_conf, u[:, 1]), p)
            p, p_new = to_device(p, dev), to_device(p_new, dev)
        else:
            p = dist.masked_fill(~d_pos, -big).argmax(1)
            p_new = torch.where(d_pos_conf.any(1), dist.masked_fill(~d_pos_conf, -big).argmax(1),
                                p)
        nn_ = dist.masked_fill(~d_neg, big).argmin(1)  # hardest negative n
        d_neg_conf = d_neg & conf[None, :]
        n_new = torch.where(d_neg_conf.any(1), dist.masked_fill(~d_neg_conf, big).argmin(1), nn_)
        false_neg = logits.argmax(1)[nn_] == labels
        cp, cn = conf[p], conf[nn_]

        def at(j: torch.Tensor) -> torch.Tensor:
            return dist.gather(1, j[:, None]).squeeze(1)

        d_p, d_n = at(p), at(nn_)
        mid = (d_p + d_n) / 2
        plain = cn | ~false_neg  # the negative is trusted (confident, or not a false negative)
        d_ap = torch.where(cp, torch.where(plain, d_p, mid), torch.where(plain, at(p_new), d_n))
        d_an = torch.where(cp, torch.where(plain, d_n, at(n_new)), torch.where(plain, mid, d_p))
        hinge = torch.relu(d_ap - d_an + self.margin)  # (N,)
        groups = torch.unique(h_groups).tolist() if self.per_modality else [None]
        per_group = []
        for g in groups:
            rows = (anchors if g is None else anchors & (h_groups == g)).nonzero().squeeze(1)
            if len(rows):
                per_group.append(hinge[to_device(rows, dev)].sum() / len(rows))
        return torch.stack(per_group).mean()
