"""The labelled fraction of weak supervision: which training rows keep their label.

The TSKD paper (Sec. 3.1) trains with 10/25/50 % of the labels and does not say how the fraction
is drawn. Two draws, switch ``supervision.label_split``:

- ``per_identity`` (default): the group's DPIS protocol as later work describes it, a fraction of
  the images *of each identity in each modality* (RegDB at 10 %: one visible and one infrared
  image per identity). Per identity with n images of a modality, ``round(ratio * n)`` are
  labelled, at least 1 and at most n. Rounding is to the nearest integer with halves rounded
  *up*, the ratio read as the decimal typed (0.25 * 10 = 2.5 gives 3, RegDB at 25 % thus labels
  30 %); Python's ``round`` would round halves to even, and 2.5 -> 2 but 3.5 -> 4 is no rule a
  reader expects.
- ``global``: the code family's unstratified draw, ``ceil(ratio * N)`` of each modality's rows;
  it may leave identities without a labelled image (about 35 % of RegDB's at 10 %).

Ratio 1 labels every row in both modes. One generator stream per modality, from ``seed`` alone.
"""

from __future__ import annotations

import math

import numpy as np

from tskd.core.errors import InputError
from tskd.supervision.draws import (
    MODALITIES,
    SPLIT_STREAM,
    LabelSplit,
    as_labels,
    ceil_count,
    check_seed,
    exact_fraction,
    modality_rng,
)
from tskd.supervision.modes import LABEL_SPLITS

__all__ = ["LabelSplit", "draw_split", "per_identity_counts"]


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer)):
        raise InputError(f"label ratio must be a number in (0, 1], got {ratio!r}")
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:  # also refuses NaN
        raise InputError(f"label ratio must lie in (0, 1], got {ratio}; set "
                         "supervision.label_ratio to e.g. 0.1 (a run needs some labels)")
    return ratio


def per_identity_counts(ratio: float, sizes: np.ndarray) -> np.ndarray:
    """Labelled images per identity of ``sizes`` images: round half up, within [1, n]."""
    frac = exact_fraction(ratio)
    rounded = [math.floor(frac * int(n) + exact_fraction(0.5)) for n in sizes]
    return np.clip(np.asarray(rounded, dtype=np.int64), 1, sizes)


def _per_identity(true: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Labelled rows: in a uniformly random order of all rows, each identity's first c rows."""
    ids, sizes = np.unique(true, return_counts=True)
    order = rng.permutation(true.size)
    # rows grouped by identity, each group in the random order (a stable sort keeps it)
    grouped = order[np.argsort(true[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    counts = per_identity_counts(ratio, sizes)
    return np.concatenate([grouped[s:s + c] for s, c in zip(starts, counts)])


def draw_split(visible_true, infrared_true, ratio: float, mode: str, seed: int) -> LabelSplit:
    """Draw which training rows keep their labels under weak supervision.

    Args:
        visible_true: (N_v,) training labels of the visible images.
        infrared_true: (N_i,) training labels of the infrared images.
        ratio: the labelled fraction, in (0, 1].
        mode: ``"per_identity"`` or ``"global"`` (see the module doc for counts and rounding).
        seed: decides the whole split; each modality has its own stream, so one modality's split
            does not depend on the other modality's labels.

    Returns:
        The split (sorted int64 rows; labelled and unlabelled partition each modality's rows).

    Raises:
        InputError: a malformed label list, ratio, mode or seed.
    """
    ratio, seed = _check_ratio(ratio), check_seed(seed, "label seed")
    if mode not in LABEL_SPLITS:
        raise InputError(f"label split mode must be one of {LABEL_SPLITS}, got {mode!r}; "
                         "set supervision.label_split accordingly")
    rows = {}
    for index, (name, values) in enumerate(zip(MODALITIES, (visible_true, infrared_true))):
        true = as_labels(values, f"{name} training labels")
        rng = modality_rng(seed, SPLIT_STREAM, index)
        if mode == "per_identity":
            labelled = _per_identity(true, ratio, rng)
        else:
            labelled = rng.choice(true.size, size=ceil_count(ratio, true.size), replace=False)
        labelled = np.sort(labelled).astype(np.int64)
        unlabelled = np.setdiff1d(np.arange(true.size), labelled).astype(np.int64)
        rows[name] = labelled, unlabelled
    return LabelSplit(visible_labelled=rows["visible"][0], visible_unlabelled=rows["visible"][1],
                      infrared_labelled=rows["infrared"][0],
                      infrared_unlabelled=rows["infrared"][1])
