"""The two label draws a run can make (a noise draw, a labelled split) and what they share.

The containers live here, below :mod:`.noise`, :mod:`.split` and :mod:`.label_files`, so the
module that draws and the module that reads DART's files can both build them without importing
each other (tests/test_import_graph.py forbids cycles, lazy imports included). ``noise`` and
``split`` re-export them: import ``NoiseDraw`` from :mod:`tskd.supervision.noise` and
``LabelSplit`` from :mod:`tskd.supervision.split`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tskd.core.errors import InputError

MODALITIES = ("visible", "infrared")
# Purposes of a generator stream: a noise draw and a split drawn from equal seeds stay unrelated.
NOISE_STREAM, SPLIT_STREAM = 0, 1


def as_labels(values, name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D int64 array of non-negative labels, else InputError."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D list of labels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or bool((arr < 0).any()):
        raise InputError(f"{name} must hold non-negative integer labels (dtype {arr.dtype}, "
                         f"min {arr.min()}); pass the dataset's training labels 0..n-1")
    return arr.astype(np.int64)


def check_seed(seed, name: str) -> int:
    """A seed as a non-negative int (what ``np.random.SeedSequence`` accepts), else InputError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{name} must be a non-negative integer, got {seed!r}")
    return int(seed)


def modality_rng(seed: int, purpose: int, modality: int) -> np.random.Generator:
    """The generator of one (purpose, modality): a child of ``SeedSequence(seed)``.

    One stream per modality makes the modalities independent: one modality's draw depends on its
    own label list and the seed only, never on the other modality's list.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose, modality)))


def exact_fraction(value: float) -> Fraction:
    """``value`` as the decimal a user typed (0.2 is 1/5, not 0.2000000000000000111...).

    Counts use it so that ceil(0.2 * 15) is 3, as intended, and not 4 as float rounding could
    make it; for the rates and sizes of SYSU-MM01, RegDB and LLCM it agrees with DART's
    ``np.ceil(rate * n)``.
    """
    return Fraction(repr(float(value)))


def ceil_count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` with ``fraction`` read as its decimal (:func:`exact_fraction`)."""
    return math.ceil(exact_fraction(fraction) * n)


def _rows(values) -> np.ndarray:
    return np.sort(np.asarray(values, dtype=np.int64).reshape(-1))


def _complement(rows: np.ndarray, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[rows] = False
    return np.flatnonzero(keep).astype(np.int64)


@dataclass(frozen=True, eq=False)
class NoiseDraw:
    """The training labels of a noisy run and which rows were corrupted.

    Attributes:
        visible: (N_v,) int64 labels the run trains on (noisy at ``visible_noisy``).
        infrared: (N_i,) int64 labels the run trains on.
        visible_noisy: sorted int64 rows whose label was replaced by another identity's.
        infrared_noisy: the same for infrared.

    The arrays are shared, not copied: treat them as read-only. Compare draws with
    :meth:`same_as` (``==`` on numpy arrays has no single truth value).
    """

    visible: np.ndarray
    infrared: np.ndarray
    visible_noisy: np.ndarray
    infrared_noisy: np.ndarray

    def __post_init__(self) -> None:
        for name in ("visible", "infrared"):
            labels = np.asarray(getattr(self, name), dtype=np.int64).reshape(-1)
            rows = _rows(getattr(self, f"{name}_noisy"))
            if rows.size and (rows[0] < 0 or rows[-1] >= labels.size
                              or bool((np.diff(rows) == 0).any())):
                raise InputError(f"{name}_noisy must hold distinct rows in 0..{labels.size - 1}")
            object.__setattr__(self, name, labels)
            object.__setattr__(self, f"{name}_noisy", rows)

    @property
    def visible_clean(self) -> np.ndarray:
        """Sorted rows whose label is the true one."""
        return _complement(self.visible_noisy, self.visible.size)

    @property
    def infrared_clean(self) -> np.ndarray:
        """Sorted rows whose label is the true one."""
        return _complement(self.infrared_noisy, self.infrared.size)

    def labels(self, modality: str) -> np.ndarray:
        """The training labels of ``modality`` ("visible" or "infrared")."""
        return getattr(self, _modality(modality))

    def noisy(self, modality: str) -> np.ndarray:
        """The corrupted rows of ``modality``."""
        return getattr(self, f"{_modality(modality)}_noisy")

    def clean(self, modality: str) -> np.ndarray:
        """The rows of ``modality`` that kept their true label."""
        return getattr(self, f"{_modality(modality)}_clean")

    def realised_rates(self) -> dict[str, float]:
        """The share of corrupted rows per modality (the log line of a noisy run)."""
        return {m: self.noisy(m).size / self.labels(m).size for m in MODALITIES}

    def same_as(self, other: NoiseDraw) -> bool:
        """True when both draws give every row the same label and mark the same rows noisy."""
        return all(np.array_equal(getattr(self, f), getattr(other, f))
                   for f in ("visible", "infrared", "visible_noisy", "infrared_noisy"))


@dataclass(frozen=True, eq=False)
class LabelSplit:
    """Which training rows keep their label under weak supervision (sorted int64 row indices).

    Per modality the labelled and unlabelled rows partition 0..N-1.
    """

    visible_labelled: np.ndarray
    visible_unlabelled: np.ndarray
    infrared_labelled: np.ndarray
    infrared_unlabelled: np.ndarray

    def __post_init__(self) -> None:
        for name in ("visible", "infrared"):
            lab = _rows(getattr(self, f"{name}_labelled"))
            unl = _rows(getattr(self, f"{name}_unlabelled"))
            both = np.sort(np.concatenate([lab, unl]))
            if not np.array_equal(both, np.arange(both.size)):
                raise InputError(f"{name} labelled and unlabelled rows must partition "
                                 f"0..{both.size - 1} without overlap")
            object.__setattr__(self, f"{name}_labelled", lab)
            object.__setattr__(self, f"{name}_unlabelled", unl)

    def labelled(self, modality: str) -> np.ndarray:
        return getattr(self, f"{_modality(modality)}_labelled")

    def unlabelled(self, modality: str) -> np.ndarray:
        return getattr(self, f"{_modality(modality)}_unlabelled")

    def labelled_mask(self, modality: str) -> np.ndarray:
        """(N,) bool, True at the labelled rows of ``modality``."""
        lab, unl = self.labelled(modality), self.unlabelled(modality)
        mask = np.zeros(lab.size + unl.size, dtype=bool)
        mask[lab] = True
        return mask

    def fractions(self) -> dict[str, float]:
        """The realised labelled share per modality."""
        return {m: self.labelled(m).size / (self.labelled(m).size + self.unlabelled(m).size)
                for m in MODALITIES}

    def same_as(self, other: LabelSplit) -> bool:
        return all(np.array_equal(self.labelled(m), other.labelled(m))
                   and np.array_equal(self.unlabelled(m), other.unlabelled(m))
                   for m in MODALITIES)


def _modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality
