"""The test protocol as data: which images exist and which searches are run over them.

A :class:`TestProtocol` lists every test image once (query images and every gallery candidate)
with its identity, camera and modality, plus the searches to run: each search is a pair of index
arrays into that list. The evaluation engine embeds the union of the indices once and runs every
search by indexing, so ten SYSU trials in two modes cost one feature pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}


@dataclass(frozen=True)
class Search:
    """One retrieval run: every query ranked against one gallery.

    Attributes:
        setting: ``"all"``/``"indoor"`` (SYSU search mode) or ``"visible2thermal"`` /
            ``"thermal2visible"`` (RegDB direction).
        trial: Gallery trial (SYSU: 0..9, the seed of the gallery draw) or RegDB split (1..10).
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
        dataset: ``"sysu"`` or ``"regdb"``; selects the metric (identity- vs image-level CMC).
        paths: Image file of every entry (for ranked-list pictures).
        pids: (N,) raw identity of every entry.
        cams: (N,) camera of every entry (SYSU 1..6; RegDB 1 visible, 2 thermal).
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
