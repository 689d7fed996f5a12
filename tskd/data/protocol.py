"""A dataset's protocol as data: its facts and lists, its test images and the searches over them.

A :class:`DatasetProtocol` is everything the shared code (datamodule, evaluation, run.py,
visualiser) needs to know about one dataset: its training lists, its test images, the searches
of each setting and trial, the metric that scores them, how a setting is labelled in
metrics.json, and which trials exist. Each dataset module (``sysu``, ``regdb``, ``llcm``)
defines one, and :mod:`tskd.data.registry` maps ``dataset.name`` to it, so no shared code
branches on a dataset's name.

A :class:`TestProtocol` lists every test image once (query images and every gallery candidate)
with its identity, camera and modality, plus the searches to run: each search is a pair of index
arrays into that list. The evaluation engine embeds the union of the indices once and runs every
search by indexing, so ten SYSU trials in two modes cost one feature pass.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tskd.core.errors import DatasetError

VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}


@dataclass(frozen=True)
class Search:
    """One retrieval run: every query ranked against one gallery.

    Attributes:
        setting: One of the dataset's settings: ``"all"``/``"indoor"`` (SYSU search mode),
            ``"visible2thermal"``/``"thermal2visible"`` (RegDB direction),
            ``"infrared2visible"``/``"visible2infrared"`` (LLCM direction).
        trial: Gallery trial (SYSU, LLCM: 0..9, the seed of the draw) or RegDB split (1..10).
        query: int64 indices into the protocol's arrays.
        gallery: int64 indices into the protocol's arrays.
    """

    setting: str
    trial: int
    query: np.ndarray
    gallery: np.ndarray


@dataclass
class TestProtocol:
    """All test images of one dataset and the searches defined over them.

    Attributes:
        dataset: The registered dataset name; its :class:`DatasetProtocol` names the metric and
            how settings are labelled.
        paths: Image file of every entry (for ranked-list pictures).
        pids: (N,) raw identity of every entry.
        cams: (N,) camera of every entry (SYSU 1..6; RegDB 1 visible, 2 thermal; LLCM 1..9).
        modality: (N,) ``VISIBLE`` or ``INFRARED``; selects the network stem.
        searches: The searches to run, in report order.
    """

    dataset: str
    paths: list[str]
    pids: np.ndarray
    cams: np.ndarray
    modality: np.ndarray
    searches: list[Search] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.paths)
        for name in ("pids", "cams", "modality"):
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.shape != (n,):
                raise ValueError(f"TestProtocol.{name} has shape {arr.shape}, expected ({n},)")
            setattr(self, name, arr)

    def needed(self) -> np.ndarray:
        """Sorted indices of the images any search uses: the only ones that must be embedded."""
        if not self.searches:
            return np.zeros(0, dtype=np.int64)
        parts = [np.asarray(s.query) for s in self.searches]
        parts += [np.asarray(s.gallery) for s in self.searches]
        return np.unique(np.concatenate(parts)).astype(np.int64)

    def settings(self) -> list[str]:
        """Distinct search settings in first-seen order."""
        seen: dict[str, None] = {}
        for s in self.searches:
            seen.setdefault(s.setting, None)
        return list(seen)


Record = tuple[str, int, int]  # (path, identity or training label, camera)


@dataclass(frozen=True)
class DatasetProtocol:
    """One dataset's lists, test protocol and facts: the only per-dataset code the rest reads.

    Attributes:
        name: ``dataset.name`` (the registry key and ``TestProtocol.dataset``).
        metric: Name of its metric in :data:`tskd.metrics.METRICS` (the camera rule and CMC
            level); a name, so ``tskd.data`` never imports the metrics.
        settings: Every setting it defines, in report order.
        setting_field: How metrics.json labels a setting: ``"mode"`` or ``"direction"``.
        fixed_labels: The other label of every summary (SYSU: ``direction`` infrared2visible;
            the others: ``mode`` None).
        trials: The trials that exist (SYSU, LLCM: gallery draws 0..9; RegDB: splits 1..10).
        trial_selects_training: The trial picks the training identities (RegDB splits): a
            resume must keep it, and testing another one leaks training identities.
        trial_hint: What ``dataset.trial`` may be, for messages.
        default_settings: ``mode.name`` -> the settings tested when none are asked for (SYSU:
            that mode; the others: their standard settings, whatever the mode).
        train_lists: ``(root, trial)`` -> (visible, infrared) training records.
        test_records: ``(root, trial)`` -> (every test image any search uses, its modality):
            the images of one test cache and one feature pass.
        searches: ``(root, trial, records, settings, shots)`` -> the searches, as index arrays
            into ``records``, of each setting and trial (trial None: all of them).
        shared_cache_paths: ``root`` -> every image of every split, when all splits share one
            cache viewed through rows (RegDB: ten splits of a sweep, one cache); None: one
            cache per list.
        prebuilt_train_arrays: ``(root, size, visible labels, infrared labels)`` -> (visible,
            infrared) arrays another codebase already wrote, or None; None: no such files.
        noise_keeps_every_identity: ``supervision=noisy``: redraw the noise until every
            identity keeps a label in each modality (DART does this for RegDB only).
        title: The dataset's name in messages (e.g. ``"SYSU-MM01"``).
        notes: ``setting -> note`` printed under the results table (what a setting really
            computes where its name alone would mislead).
    """

    name: str
    metric: str
    settings: tuple[str, ...]
    setting_field: str
    fixed_labels: dict
    trials: range
    trial_selects_training: bool
    trial_hint: str
    default_settings: Callable[[str], tuple[str, ...]]
    train_lists: Callable[[str, int | None], tuple[list[Record], list[Record]]]
    test_records: Callable[[str, int | None], tuple[list[Record], list[int]]]
    searches: Callable[..., list[Search]]
    shared_cache_paths: Callable[[str], list[str]] | None = None
    prebuilt_train_arrays: Callable | None = None
    noise_keeps_every_identity: bool = False
    title: str = ""
    notes: dict = field(default_factory=dict)

    def check_trial(self, trial) -> int | None:
        """``dataset.trial`` as an int (None where the dataset allows all trials).

        Raises:
            DatasetError: Not one of :attr:`trials` (or None where a split is required).
        """
        if trial is None and not self.trial_selects_training:
            return None
        try:
            value = None if isinstance(trial, bool) else operator.index(trial)
        except TypeError:
            value = None
        if value not in self.trials:
            raise DatasetError(f"dataset.trial={trial!r}: {self.trial_hint}")
        return value

    def trial_list(self, trial: int | None) -> list[int]:
        """The trials a test runs: the one asked for, or all of them."""
        return list(self.trials) if trial is None else [int(trial)]

    def resolve_settings(self, settings: Sequence[str] | None, mode: str) -> tuple[str, ...]:
        """The settings to test: those asked for (checked), else :attr:`default_settings`.

        Raises:
            DatasetError: A setting this dataset does not define.
        """
        chosen = tuple(settings) if settings else tuple(self.default_settings(mode))
        bad = [s for s in chosen if s not in self.settings]
        if bad:
            raise DatasetError(f"{self.name} has no setting {bad[0]!r}; its settings are "
                               f"{list(self.settings)}")
        return chosen

    def labels(self, setting: str) -> dict:
        """The ``mode``/``direction`` keys of a metrics.json summary of ``setting``."""
        return {"mode": None, "direction": None, **self.fixed_labels,
                self.setting_field: setting}


def indices_of(rows: dict[str, int], records: Sequence[Record]) -> np.ndarray:
    """int64 positions of ``records`` (by path) in a test list whose ``path -> row`` is ``rows``."""
    return np.array([rows[r[0]] for r in records], dtype=np.int64)
