"""Noisy training labels drawn as DART draws them, seeded fully and cached.

DART (Yang et al., CVPR 2022; ``data_loader.py``, ``SYSUData`` / ``RegDBData``) corrupts each
modality independently: exactly ``ceil(rate * N)`` training rows, drawn without replacement, get
a label drawn uniformly from the *other* identities of that modality, so the realised flip rate is
the rate itself. Queries and galleries are never touched (only training labels come in here).
RegDB redraws until every identity still carries a label in each modality.

DART seeds only its first index draw (``random.seed()`` without argument re-seeds before the new
labels) and makes runs comparable by saving the draw; here one ``seed`` decides everything, one
generator stream per modality (:func:`~tskd.supervision.draws.modality_rng`), and the draw is
cached in DART's file format under a key over everything it depends on (:func:`cached_noise`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from tskd.core.errors import DatasetError, InputError
from tskd.supervision.draws import (
    MODALITIES,
    NOISE_STREAM,
    NoiseDraw,
    as_labels,
    ceil_count,
    check_seed,
    modality_rng,
)
from tskd.supervision.label_files import noise_file_paths, read_noise_files, write_noise_files

__all__ = ["MAX_TRIES", "NoiseDraw", "cached_noise", "draw_noise", "noise_key"]

log = logging.getLogger(__name__)

# Part of every cache key: change it whenever the draw changes, so no stale cached draw is reused.
NOISE_ALGORITHM = "tskd-noise-1"
# Redraws allowed per modality under every_identity_survives. A draw that loses an identity is
# rare at the rates in use (RegDB at 50 %: about 1 in 700), so hitting this bound means the
# lists make the rule practically unreachable, not bad luck.
MAX_TRIES = 1000


def _check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise InputError(f"label noise rate must be a number in [0, 1], got {rate!r}")
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise InputError(f"label noise rate must lie in [0, 1], got {rate}; "
                         "set supervision.label_noise to e.g. 0.2")
    return rate


def _draw_modality(true: np.ndarray, rate: float, rng: np.random.Generator, name: str,
                   every_identity_survives: bool, max_tries: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, sorted noisy rows) of one modality."""
    k = ceil_count(rate, true.size)
    if k == 0:
        return true.copy(), np.empty(0, dtype=np.int64)
    ids = np.unique(true)
    if ids.size < 2:
        raise DatasetError(f"{name} training labels hold a single identity ({ids[0]}): a noisy "
                           "label must name another identity. Use a dataset with at least two "
                           "identities per modality or supervision.label_noise=0")
    position = np.searchsorted(ids, true)  # each row's identity as an index into ids
    for _ in range(max_tries):
        rows = np.sort(rng.choice(true.size, size=k, replace=False)).astype(np.int64)
        # uniform over the ids.size - 1 other identities: draw an index among them, then step
        # over the true identity's index
        other = rng.integers(0, ids.size - 1, size=k)
        other += other >= position[rows]
        noisy = true.copy()
        noisy[rows] = ids[other]
        if not every_identity_survives or np.unique(noisy).size == ids.size:
            return noisy, rows
    raise DatasetError(
        f"{name}: no noise draw at rate {rate} keeps every one of the {ids.size} identities "
        f"labelled after {max_tries} tries (the RegDB rule). The rate is too high for identities "
        "this small; lower supervision.label_noise or use a dataset without the rule")


def draw_noise(visible_true, infrared_true, rate: float, seed: int, *,
               every_identity_survives: bool, max_tries: int = MAX_TRIES) -> NoiseDraw:
    """DART's noise draw over the training labels of both modalities.

    Args:
        visible_true: (N_v,) true training labels of the visible images.
        infrared_true: (N_i,) true training labels of the infrared images.
        rate: the share of each modality's rows to corrupt, in [0, 1]; ``ceil(rate * N)`` rows
            (the rate read as the decimal typed, :func:`~tskd.supervision.draws.ceil_count`).
        seed: decides the whole draw; each modality has its own stream, so one modality's draw
            does not depend on the other modality's labels.
        every_identity_survives: RegDB's rule: redraw a modality (continuing its stream, so still
            determined by ``seed``) until every identity of it still labels at least one row.
            The first draw that survives is kept, so where it is the first draw the result equals
            the draw without the rule.
        max_tries: draws per modality before giving up with a DatasetError.

    Returns:
        The draw; at rate 0 the true labels and no noisy rows.

    Raises:
        InputError: a malformed label list, rate or seed.
        DatasetError: a modality with one identity at a rate above 0, or the rule unreachable.
    """
    rate, seed = _check_rate(rate), check_seed(seed, "noise seed")
    out = {}
    for index, (name, true) in enumerate(zip(MODALITIES, (visible_true, infrared_true))):
        labels = as_labels(true, f"{name} training labels")
        out[name] = _draw_modality(labels, rate, modality_rng(seed, NOISE_STREAM, index), name,
                                   every_identity_survives, max_tries)
    return NoiseDraw(visible=out["visible"][0], infrared=out["infrared"][0],
                     visible_noisy=out["visible"][1], infrared_noisy=out["infrared"][1])


def noise_key(dataset: str, trial, rate: float, seed: int, visible_true, infrared_true, *,
              every_identity_survives: bool = False) -> str:
    """A 16-hex-digit key over everything a noise draw depends on (the cache key).

    It covers the dataset name, trial, rate, seed, the rule, the draw's algorithm version and both
    label lists (their lengths and values), so a changed list or setting never reuses a draw.
    """
    doc = {"algorithm": NOISE_ALGORITHM, "dataset": str(dataset),
           "trial": None if trial is None else int(trial), "rate": _check_rate(rate),
           "seed": check_seed(seed, "noise seed"),
           "every_identity_survives": bool(every_identity_survives)}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
    for name, true in zip(MODALITIES, (visible_true, infrared_true)):
        labels = as_labels(true, f"{name} training labels")
        digest.update(f"|{name}:{labels.size}|".encode())
        digest.update(labels.astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def cache_prefix(cache_dir: Path, dataset: str, trial, rate: float, seed: int, key: str) -> Path:
    """Where :func:`cached_noise` keeps a draw: a readable name ending in the key."""
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", str(dataset)) or "dataset"
    trial_part = "" if trial is None else f"_trial{int(trial)}"
    return Path(cache_dir) / f"{safe}{trial_part}_noise{float(rate):g}_seed{int(seed)}_{key}"


def cached_noise(cache_dir: Path, dataset: str, trial, visible_true, infrared_true, rate: float,
                 seed: int, *, every_identity_survives: bool) -> NoiseDraw:
    """:func:`draw_noise`, drawn once and reused from ``cache_dir`` afterwards.

    The draw is stored as DART's eight arrays under :func:`cache_prefix` (each file written
    atomically). A stored draw is read back with every check of
    :func:`~tskd.supervision.label_files.read_noise_files`; one that fails them (a truncated or
    edited file) is drawn again and rewritten. Rate 0 corrupts nothing and stores nothing.
    """
    if _check_rate(rate) == 0.0:
        return draw_noise(visible_true, infrared_true, rate, seed,
                          every_identity_survives=every_identity_survives)
    key = noise_key(dataset, trial, rate, seed, visible_true, infrared_true,
                    every_identity_survives=every_identity_survives)
    prefix = cache_prefix(cache_dir, dataset, trial, rate, seed, key)
    if any(path.exists() for path in noise_file_paths(prefix).values()):
        try:
            draw = read_noise_files(prefix, visible_true, infrared_true)
            log.debug("reusing the noise draw %s", prefix)
            return draw
        except DatasetError as err:
            log.warning("redrawing label noise: the cached draw is unusable (%s)", err)
    draw = draw_noise(visible_true, infrared_true, rate, seed,
                      every_identity_survives=every_identity_survives)
    write_noise_files(draw, visible_true, infrared_true, prefix)
    return draw
