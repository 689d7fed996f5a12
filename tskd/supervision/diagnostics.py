"""Per-epoch diagnostics of noisy and weak supervision: how well the confidences and the
pseudo-labels track the truth (SUPERVISION.md, "Diagnostics").

These are the only readers of the true labels: they take numpy arrays or tensors and return
plain floats for the logs, and nothing here feeds back into training. A statistic over an empty
group (no noisy samples at rate 0, no wrong pseudo-labels) is NaN rather than a made-up number.
"""

from __future__ import annotations

import numpy as np

from tskd.core.errors import InputError

__all__ = ["auc", "noise_diagnostics", "weak_diagnostics"]

NAN = float("nan")


def _array(x, name: str) -> np.ndarray:
    """A 1-D numpy copy of a tensor or array-like (tensors are detached and moved to the host)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise InputError(f"{name} must be 1-D (one value per sample), got shape {a.shape}")
    return a


def _same_length(**arrays: np.ndarray) -> None:
    sizes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"diagnostics need one value per sample in every input, got sizes "
                         f"{sizes}; pass arrays over the same training images")


def _mask(x, name: str) -> np.ndarray:
    a = _array(x, name)
    if a.dtype != np.bool_:
        raise InputError(f"{name} must be a boolean mask, got dtype {a.dtype}; compare with the "
                         "true labels first (e.g. noisy == true)")
    return a


def _finite(x, name: str) -> np.ndarray:
    a = _array(x, name).astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite values; the "
                         "confidences or losses diverged")
    return a


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else NAN


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks of ``a`` with tied values sharing the mean of their ranks."""
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # a tie group is a run of equal sorted values: [start, end) with mean rank (start+1+end)/2
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def auc(scores, positive) -> float:
    """ROC AUC of ``scores`` for the positive vs the negative samples (ties count one half).

    Computed as the Mann-Whitney statistic from average ranks: the probability that a random
    positive scores above a random negative.

    Args:
        scores: (N,) finite scores.
        positive: (N,) bool mask of the positive samples.

    Returns:
        The AUC in [0, 1]; NaN when either group is empty.
    """
    s, pos = _finite(scores, "scores"), _mask(positive, "positive")
    _same_length(scores=s, positive=pos)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    rank_sum = _average_ranks(s)[pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def noise_diagnostics(w, clean_mask) -> dict[str, float]:
    """How the confidences ``w`` of one view separate its clean from its noisy labels.

    Args:
        w: (N,) confidences in [0, 1].
        clean_mask: (N,) bool, True where the training label equals the true label.

    Returns:
        ``clean_w_above_half`` (share of clean samples with w > 0.5), ``noisy_w_below_half``
        (share of noisy samples with w < 0.5; the two DART prints), ``auc`` (of w, clean
        positive), ``mean_w_clean``, ``mean_w_noisy`` and ``noisy_share``. NaN where a group is
        empty.
    """
    w, clean = _finite(w, "w"), _mask(clean_mask, "clean_mask")
    _same_length(w=w, clean_mask=clean)
    if w.size == 0:
        raise InputError("noise_diagnostics got no samples; pass the view's confidences")
    w_clean, w_noisy = w[clean], w[~clean]
    return {
        "clean_w_above_half": _mean(w_clean > 0.5),
        "noisy_w_below_half": _mean(w_noisy < 0.5),
        "auc": auc(w, clean),
        "mean_w_clean": _mean(w_clean),
        "mean_w_noisy": _mean(w_noisy),
        "noisy_share": float((~clean).mean()),
    }


def _rows(unlabelled, n: int) -> np.ndarray:
    """Integer row indices from a bool mask (N,) or an index array."""
    u = _array(unlabelled, "unlabelled")
    if u.dtype == np.bool_:
        if u.shape[0] != n:
            raise InputError(f"unlabelled mask has {u.shape[0]} entries for {n} samples")
        return np.flatnonzero(u)
    if u.size and not np.issubdtype(u.dtype, np.integer):
        raise InputError(f"unlabelled must be a bool mask or integer indices, got {u.dtype}")
    u = u.astype(np.int64)
    if u.size and (u.min() < 0 or u.max() >= n):
        raise InputError(f"unlabelled indices must lie in [0, {n}), got [{u.min()}, {u.max()}]")
    return u


def weak_diagnostics(labels, true, unlabelled, previous=None, w=None) -> dict[str, float]:
    """How good one modality's pseudo-labels are.

    Args:
        labels: (N,) current labels (ground truth where labelled, pseudo-labels elsewhere).
        true: (N,) true labels.
        unlabelled: The pseudo-labelled rows, as a bool mask (N,) or integer indices.
        previous: (N,) the labels of the previous refresh, or None at the first one.
        w: (N,) confidences, or None.

    Returns:
        Over the unlabelled rows: ``pseudo_accuracy`` (labels == true) and ``changed`` (share
        whose label differs from ``previous``; NaN without it); ``ids_present``: distinct labels
        over all N rows; with ``w``, ``mean_w_right`` and ``mean_w_wrong`` over the unlabelled
        rows. NaN where a group is empty.
    """
    labels, true = _array(labels, "labels"), _array(true, "true")
    _same_length(labels=labels, true=true)
    rows = _rows(unlabelled, labels.shape[0])
    right = labels[rows] == true[rows]
    out = {"pseudo_accuracy": _mean(right), "changed": NAN,
           "ids_present": float(np.unique(labels).size)}
    if previous is not None:
        prev = _array(previous, "previous")
        _same_length(labels=labels, previous=prev)
        out["changed"] = _mean(labels[rows] != prev[rows])
    if w is not None:
        wu = _finite(w, "w")
        _same_length(labels=labels, w=wu)
        wu = wu[rows]
        out["mean_w_right"], out["mean_w_wrong"] = _mean(wu[right]), _mean(wu[~right])
    return out

