"""The LightningDataModule: SYSU-MM01 / RegDB lists, the image cache, loaders for every pass.

Passes it serves:
- training: identity-aligned batches ``(vis1, vis2, ir, labels, vis_idx, ir_idx)`` from the
  cross-modality identity sampler (which splits identities across DDP ranks itself);
- confidence: every training image once with the training augmentations, in batches of P*K
  per modality split across ranks batch by batch (the faithful GMM pass), or plain passes over
  one modality's un-augmented images split by stride (the ``gmm_pass=eval`` switch);
- prototypes: the epoch's training slots again with fresh augmentation draws;
- test: every image the test protocol needs, each once, with its modality and protocol index.

All images come from memory-mapped uint8 caches, so workers share the page cache instead of each
holding a copy of the arrays.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tskd.data import regdb, sysu
from tskd.data.cache import cached_images, standard_train_arrays
from tskd.data.datasets import (
    AugmentedPassSet,
    CachedImageSet,
    CrossModalityTrainSet,
    RowView,
    TestImageSet,
)
from tskd.data.protocol import INFRARED, VISIBLE, Search, TestProtocol
from tskd.data.samplers import CrossModalityIdentitySampler, FreshDrawBatches
from tskd.data.synthetic import ensure_synthetic
from tskd.data.transforms import TrainTransform
from tskd.errors import DatasetError

log = logging.getLogger(__name__)

SYSU_TRIALS = range(10)
MAX_AUTO_WORKERS = 8  # more loader workers than this per device only add memory


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM or taskset allocation)."""
    if hasattr(os, "sched_getaffinity"):  # Linux: the mask, not the machine's count
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_num_workers(value: int | str, devices: int = 1) -> int:
    """``data.num_workers``: an int as given; ``"auto"`` the process's CPUs per device, <= 8.

    Args:
        value: The config value, ``"auto"`` or a whole number >= 0.
        devices: Training processes on this machine sharing its CPUs (DDP devices per node).
    """
    if value == "auto":
        return max(1, min(MAX_AUTO_WORKERS, available_cpus() // max(1, int(devices))))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"data.num_workers={value!r}: use auto or a whole number >= 0")
    return value


def default_cache_dir(root: str | Path) -> Path:
    """``ROOT/tskd_cache`` when the dataset folder is writable, else a user cache folder.

    Datasets often live on read-only shares; the fallback is named after the dataset's absolute
    path so two copies of a dataset never share (and keep rebuilding) one cache.
    """
    root = Path(root).resolve()
    if os.access(root, os.W_OK) or not root.exists():
        return root / "tskd_cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tskd"
    return base / "_".join(p for p in root.parts if p not in ("/", "\\"))


# The paper pads 10 px at 144 px width (7%); the demo measured rank-1 27% with pad 2 vs 13% with
# pad 10 at 32 px (31%). Warn well above the paper's proportion, where crops start to cut people.
PAPER_PAD, PAPER_WIDTH = 10, 144
PAD_WARN_FRACTION = 0.1


def _warn_large_pad(pad: int, img_w: int) -> None:
    """Training only (evaluation never pads): a warning with the proportional value."""
    if pad > PAD_WARN_FRACTION * img_w:
        log.warning(
            "data.pad=%d is %.0f%% of the %d px image width; the paper's %d px is %.0f%% of %d px, "
            "and larger shifts crop the person out of small images. For this size the same "
            "proportion is data.pad=%d.", pad, 100 * pad / img_w, img_w, PAPER_PAD,
            100 * PAPER_PAD / PAPER_WIDTH, PAPER_WIDTH, round(PAPER_PAD * img_w / PAPER_WIDTH),
        )


class ReIDDataModule(pl.LightningDataModule):
    """SYSU-MM01 or RegDB for TSKD training and the standard test protocol.

    Args:
        name: Protocol, ``"sysu"`` or ``"regdb"``.
        root: Dataset folder in the raw layout (see PROTOCOL.md).
        img_h: Cached image height.
        img_w: Cached image width.
        trial: SYSU: gallery trial to test (None = all ten); RegDB: the split 1..10.
        modes: SYSU search modes to test (``"all"``, ``"indoor"``); ignored for RegDB.
        shots: Gallery images per identity and camera (SYSU).
        cache_dir: Folder for the resized-image caches. None: ``ROOT/tskd_cache``, or when the
            dataset folder is read-only a per-dataset folder under ``$XDG_CACHE_HOME/tskd``
            (``~/.cache/tskd``).
        synthetic: ``{"layout": "sysu"|"regdb", "seed": int}`` to generate the dataset at ``root``
            when it is not there yet, or None for real data.
        num_ids: P identities per batch (per device).
        num_pos: K images per identity and modality.
        num_workers: DataLoader workers.
        test_batch_size: Batch size of the test and confidence passes.
        seed: Seed of the identity sampler (augmentation draws derive from it).
        pad, erasing_p, gray_p, gray_draw, channel_exchange: Train augmentation
            (docs/method.md, "Batches").
        test_only: Evaluation: cache and load only the test images. The training lists are
            still read (for the class count a checkpoint must match) but their images are never
            cached, which at SYSU-MM01 scale saves ~4 GB of disk and minutes. RegDB's one shared
            cache holds the test images, so it is built either way.
    """

    def __init__(
        self,
        name: str,
        root: str,
        img_h: int = 288,
        img_w: int = 144,
        trial: int | None = None,
        modes: tuple[str, ...] | list[str] = ("all",),
        shots: int = 1,
        cache_dir: str | None = None,
        synthetic: dict | None = None,
        num_ids: int = 8,
        num_pos: int = 4,
        num_workers: int = 2,
        test_batch_size: int = 128,
        seed: int = 0,
        pad: int = 10,
        erasing_p: float = 0.5,
        gray_p: float = 0.5,
        gray_draw: str = "caj",
        channel_exchange: bool = True,
        test_only: bool = False,
    ) -> None:
        super().__init__()
        if name not in ("sysu", "regdb"):
            raise DatasetError(f"dataset.name={name!r} is not a protocol; use 'sysu' or 'regdb'")
        if name == "regdb" and trial not in regdb.TRIALS:
            raise DatasetError(f"dataset.trial={trial!r}: RegDB needs a split 1..10")
        if name == "sysu" and trial is not None and trial not in SYSU_TRIALS:
            raise DatasetError(f"dataset.trial={trial!r}: SYSU gallery trials are 0..9 (or null)")
        self.name, self.root, self.trial = name, str(root), trial
        self.size = (int(img_h), int(img_w))
        self.modes = tuple(modes)
        self.shots = int(shots)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        self.synthetic = dict(synthetic) if synthetic else None
        self.num_ids, self.num_pos = int(num_ids), int(num_pos)
        self.num_workers, self.test_batch_size, self.seed = num_workers, test_batch_size, seed
        self.transform = TrainTransform(
            self.size[0], self.size[1], pad=pad, erasing_p=erasing_p, gray_p=gray_p,
            gray_draw=gray_draw, channel_exchange=channel_exchange,
        )
        self.test_only = bool(test_only)
        self._ready = self._prepared = False

    # ----------------------------------------------------------------------------- lists
    def _ensure_data(self) -> None:
        if self.synthetic:
            ensure_synthetic(self.root, **self.synthetic)

    def _train_lists(self) -> tuple[list, list]:
        if self.name == "sysu":
            return sysu.train_set(self.root)
        return regdb.train_set(self.root, self.trial)

    def _test_lists(self) -> tuple[list, list]:
        """(query-side records, gallery-side records) whose union the test cache holds."""
        if self.name == "sysu":
            return sysu.query_set(self.root), sysu.gallery_candidates(self.root, "all")
        return regdb.test_set(self.root, self.trial)

    def train_label_counts(self) -> dict[str, int]:
        """Identities, visible and infrared images of the training lists; reads no image.

        What a checkpoint records about its training data (``num_classes``, ``num_visible``,
        ``num_infrared``), so a resume or an evaluation can be checked against it before any
        cache is built.
        """
        self._ensure_data()
        vis, ir = self._train_lists()
        return {"num_classes": max(r[1] for r in vis) + 1, "num_visible": len(vis),
                "num_infrared": len(ir)}

    def _cache(self, paths: list[str], tag: str) -> np.ndarray:
        h, w = self.size
        file = self.cache_dir / f"{self.name}_{tag}_{h}x{w}.npy"
        return cached_images(paths, file, self.size, desc=f"caching {tag} images")

    def prepare_data(self) -> None:
        """Generate synthetic data and build the caches once (rank 0 of each node)."""
        if self._prepared:
            return
        self._ensure_data()
        self._load(build_only=True)
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        if not self._ready:
            self._ensure_data()
            self._load()
            self._ready = True

    def _arrays(self, vis: list, ir: list, test: list, vis_labels: np.ndarray,
                ir_labels: np.ndarray) -> tuple:
        """(visible, infrared, test) image arrays aligned with the three record lists.

        SYSU: one cache per list (or the standard ``train_*_resized_img.npy`` files). RegDB: one
        cache of every image any split names, viewed through row indices, so the ten splits of a
        sweep share it instead of writing ten copies.
        """
        if self.name == "sysu":
            if self.test_only:  # evaluation never reads the training images
                return None, None, self._cache([r[0] for r in test], "test")
            std = standard_train_arrays(self.root, self.size, vis_labels, ir_labels)
            if std is None:
                std = (self._cache([r[0] for r in vis], "train_visible"),
                       self._cache([r[0] for r in ir], "train_infrared"))
            return (*std, self._cache([r[0] for r in test], "test"))
        listed = regdb.listed_paths(self.root)
        images = self._cache(listed, "all")
        row = {p: i for i, p in enumerate(listed)}
        return tuple(RowView(images, [row[r[0]] for r in recs]) for recs in (vis, ir, test))

    def _load(self, build_only: bool = False) -> None:
        vis, ir = self._train_lists()
        query_side, gallery_side = self._test_lists()
        test = list(query_side) + list(gallery_side)
        vis_labels = np.array([r[1] for r in vis], dtype=np.int64)
        ir_labels = np.array([r[1] for r in ir], dtype=np.int64)
        vis_images, ir_images, test_images = self._arrays(vis, ir, test, vis_labels, ir_labels)
        if build_only:
            return
        self.train_visible, self.train_infrared = vis, ir
        self.visible_labels, self.infrared_labels = vis_labels, ir_labels
        self.visible_images, self.infrared_images = vis_images, ir_images
        self.test_images = test_images
        self.protocol = self._protocol(list(query_side), list(gallery_side))
        log.info(
            "%s: %d ids, %d visible + %d infrared training images; %d test images, %d searches",
            self.name, self.num_classes, len(vis), len(ir), len(self.protocol.paths),
            len(self.protocol.searches),
        )

    def _protocol(self, query_side: list, gallery_side: list) -> TestProtocol:
        records = query_side + gallery_side
        nq = len(query_side)
        if self.name == "sysu":
            modality = [INFRARED] * nq + [VISIBLE] * len(gallery_side)
            row = {r[0]: nq + i for i, r in enumerate(gallery_side)}
            query = np.arange(nq, dtype=np.int64)
            trials = SYSU_TRIALS if self.trial is None else [self.trial]
            searches = []
            for mode in self.modes:
                for t in trials:
                    g = sysu.gallery_set(self.root, mode=mode, trial=t, shots=self.shots)
                    searches.append(Search(mode, t, query, np.array([row[r[0]] for r in g])))
        else:
            modality = [VISIBLE] * nq + [INFRARED] * len(gallery_side)
            vis_idx = np.arange(nq, dtype=np.int64)
            th_idx = np.arange(nq, len(records), dtype=np.int64)
            searches = [
                Search("visible2thermal", self.trial, vis_idx, th_idx),
                Search("thermal2visible", self.trial, th_idx, vis_idx),
            ]
        return TestProtocol(
            dataset=self.name, paths=[r[0] for r in records],
            pids=np.array([r[1] for r in records]), cams=np.array([r[2] for r in records]),
            modality=np.array(modality), searches=searches,
        )

    # ------------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        return int(self.visible_labels.max()) + 1

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, dataset: Dataset, batch_size: int, **kw) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, num_workers=self.num_workers,
            persistent_workers=False, pin_memory=torch.cuda.is_available(), **kw,
        )

    # ------------------------------------------------------------------------- loaders
    def _train_sampler(self) -> CrossModalityIdentitySampler:
        rank, world = self._rank_world()
        return CrossModalityIdentitySampler(
            self.visible_labels, self.infrared_labels, num_ids=self.num_ids,
            num_pos=self.num_pos, seed=self.seed, rank=rank, world_size=world,
        )

    def _train_set(self) -> CrossModalityTrainSet:
        return CrossModalityTrainSet(
            self.visible_images, self.infrared_images, self.visible_labels,
            self.infrared_labels, self.transform,
        )

    def train_dataloader(self) -> DataLoader:
        _warn_large_pad(self.transform.pad, self.size[1])
        return DataLoader(
            self._train_set(), batch_sampler=self._train_sampler(),
            num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
        )

    def prototype_dataloader(self, epoch: int, num_batches: int) -> DataLoader:
        """This rank's first ``num_batches`` training batches of ``epoch``, fresh draws."""
        batches = FreshDrawBatches(self._train_sampler(), epoch, num_batches)
        return DataLoader(self._train_set(), batch_sampler=batches,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def augmented_confidence_dataloader(self, epoch: int) -> DataLoader:
        """Every training image with the training augmentations of ``epoch``, whole batches.

        Batch b goes to rank ``b % world_size``, so each batch holds the same images as in a
        single process and a train-mode pass computes the same losses on any number of GPUs.
        """
        rank, world = self._rank_world()
        dataset = AugmentedPassSet(
            self.visible_images, self.infrared_images, self.visible_labels,
            self.infrared_labels, self.transform, batch_size=self.num_ids * self.num_pos,
            seed=self.seed, epoch=epoch,
        )
        mine = list(range(rank, len(dataset), world))
        return DataLoader(dataset, batch_size=None, sampler=mine, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available())

    def confidence_dataloader(self, modality: int) -> DataLoader:
        """All un-augmented training images of one modality, this rank's stride (gmm_pass=eval)."""
        rank, world = self._rank_world()
        images, labels = ((self.visible_images, self.visible_labels) if modality == VISIBLE
                          else (self.infrared_images, self.infrared_labels))
        rows = np.arange(rank, len(labels), world)
        subset = torch.utils.data.Subset(CachedImageSet(images, labels), rows.tolist())
        return self._loader(subset, self.test_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Each image the protocol needs once; under DDP split by stride with padding.

        Padding repeats rows so every rank has the same number of batches; the retrieval metric
        drops the repeats by protocol index.
        """
        rank, world = self._rank_world()
        needed = self.protocol.needed()
        per_rank = math.ceil(len(needed) / world)
        padded = np.resize(needed, per_rank * world)  # repeats from the start: dropped later
        mine = padded[rank::world]
        dataset = TestImageSet(self.test_images, self.protocol.modality, mine)
        return self._loader(dataset, self.test_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self.test_dataloader()
