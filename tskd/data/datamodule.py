"""The LightningDataModule: any registered dataset's lists, the image cache, loaders for every pass.

Passes it serves:
- training: identity-aligned batches ``(vis1, vis2, ir, labels, vis_idx, ir_idx)`` from the
  cross-modality identity sampler (which splits identities across DDP ranks itself);
- confidence: every training image once with the training augmentations, in batches of P*K
  per modality split across ranks batch by batch (the faithful GMM pass), or plain passes over
  one modality's un-augmented images split by stride (the ``gmm_pass=eval`` switch);
- prototypes: the epoch's training slots again with fresh augmentation draws;
- test: every image the test protocol needs, each once, with its modality and protocol index.

All images come from memory-mapped uint8 caches, so workers share the page cache instead of each
holding a copy of the arrays. Everything particular to a dataset (lists, searches, trials, shared
cache) comes from its :class:`~tskd.data.protocol.DatasetProtocol` in :mod:`tskd.data.registry`.
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

from tskd.core.errors import DatasetError, InputError
from tskd.data import registry
from tskd.data.cache import cached_images
from tskd.data.config import MAX_AUTO_WORKERS, DataConfig, DatasetConfig, EvalDataConfig
from tskd.data.datasets import (
    AugmentedPassSet,
    CachedImageSet,
    CrossModalityTrainSet,
    RowView,
    TestImageSet,
)
from tskd.data.protocol import VISIBLE, TestProtocol
from tskd.data.samplers import CrossModalityIdentitySampler, FreshDrawBatches
from tskd.data.synthetic import ensure_synthetic
from tskd.data.transforms import TrainTransform
from tskd.supervision.config import SupervisionConfig
from tskd.supervision.labels import training_labels

log = logging.getLogger(__name__)

__all__ = ["MAX_AUTO_WORKERS", "ReIDDataModule", "default_cache_dir", "resolve_num_workers"]


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
    """A registered dataset (SYSU-MM01, RegDB, LLCM, ...) for TSKD training and its test protocol.

    Built from the run's typed config nodes (:mod:`tskd.data.config`): every value comes from
    the YAML through them, none from a default here.

    Args:
        dataset: ``dataset``: name, root, image size, trial (SYSU/LLCM: the gallery trial to
            test, None = all ten; RegDB: the split 1..10), settings (None: the dataset's
            defaults for ``mode``), shots, cache folder (None: ``ROOT/tskd_cache``, or when the
            dataset folder is read-only a per-dataset folder under ``$XDG_CACHE_HOME/tskd``),
            and ``synthetic`` (generate the dataset at the root when it is not there yet).
        data: ``data``: the loaders, and for training the batch (P identities x K images per
            modality) and its augmentation (docs/method.md, "Batches"); evaluation's
            :class:`~tskd.data.config.EvalDataConfig` has only the loaders' keys.
        mode: ``mode.name`` (SYSU: the search mode tested when ``dataset.settings`` is null).
        seed: Seed of the identity sampler (augmentation draws derive from it).
        devices: Processes sharing this machine's CPUs (``data.num_workers=auto``).
        test_only: Evaluation: cache and load only the test images. The training lists are
            still read (for the class count a checkpoint must match) but their images are never
            cached, which at SYSU-MM01 scale saves ~4 GB of disk and minutes. A shared cache of
            every split (RegDB) holds the test images, so it is built either way.
        supervision: The ``supervision`` settings (configs/supervision): which training labels
            the passes serve (:mod:`tskd.supervision.labels`). None: ``full``.
    """

    def __init__(self, dataset: DatasetConfig, data: EvalDataConfig, *, mode: str, seed: int,
                 devices: int = 1, test_only: bool = False,
                 supervision: SupervisionConfig | None = None) -> None:
        super().__init__()
        self.spec = registry.get(dataset.name)
        self.name, self.root = dataset.name, str(dataset.root)
        self.trial = self.spec.check_trial(dataset.trial)
        self.size = (int(dataset.img_h), int(dataset.img_w))
        self.settings = self.spec.resolve_settings(dataset.settings, mode)
        self.shots = int(dataset.shots)
        self.cache_dir = (Path(dataset.cache_dir) if dataset.cache_dir
                          else default_cache_dir(self.root))
        self.synthetic = dataset.synthetic
        self.num_workers = resolve_num_workers(data.num_workers, devices)
        self.test_batch_size, self.seed = data.test_batch_size, seed
        self.test_only = bool(test_only)
        self.transform = None  # evaluation never augments
        if not self.test_only:
            if not isinstance(data, DataConfig):
                raise InputError(f"training needs the batch and augmentation keys of data "
                                 f"(tskd.data.config.DataConfig), got {type(data).__name__}")
            self.num_ids, self.num_pos = data.num_ids, data.num_pos
            self.transform = TrainTransform(
                self.size[0], self.size[1], pad=data.pad, erasing_p=data.erasing_p,
                gray_p=data.gray_p, gray_draw=data.gray_draw,
                channel_exchange=data.channel_exchange,
            )
        self.supervision = supervision
        self._ready = self._prepared = False
        self._lists: tuple[list, list] | None = None  # read once: resume/eval checks, then setup
        self._test: tuple[list, list] | None = None

    # ----------------------------------------------------------------------------- lists
    def _ensure_data(self) -> None:
        if self.synthetic:
            ensure_synthetic(self.root, self.synthetic.layout, seed=self.synthetic.seed)

    def _train_lists(self) -> tuple[list, list]:
        """(visible, infrared) training records, listed from ``root`` on first use only."""
        if self._lists is None:
            self._lists = self.spec.train_lists(self.root, self.trial)
        return self._lists

    def _test_records(self) -> tuple[list, list]:
        """(records, modality) of the test images, listed on first use only."""
        if self._test is None:
            self._test = self.spec.test_records(self.root, self.trial)
        return self._test

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

        One cache per list (or arrays another codebase wrote, where the dataset knows them,
        e.g. SYSU's ``train_*_resized_img.npy``), unless the dataset declares a shared cache:
        then one cache of every image any split names, viewed through row indices, so the ten
        RegDB splits of a sweep share it instead of writing ten copies.
        """
        spec = self.spec
        if spec.shared_cache_paths is None:
            if self.test_only:  # evaluation never reads the training images
                return None, None, self._cache([r[0] for r in test], "test")
            std = None
            if spec.prebuilt_train_arrays is not None:
                std = spec.prebuilt_train_arrays(self.root, self.size, vis_labels, ir_labels)
            if std is None:
                std = (self._cache([r[0] for r in vis], "train_visible"),
                       self._cache([r[0] for r in ir], "train_infrared"))
            return (*std, self._cache([r[0] for r in test], "test"))
        listed = spec.shared_cache_paths(self.root)
        images = self._cache(listed, "all")
        row = {p: i for i, p in enumerate(listed)}
        return tuple(RowView(images, [row[r[0]] for r in recs]) for recs in (vis, ir, test))

    def _load(self, build_only: bool = False) -> None:
        vis, ir = self._train_lists()
        test, modality = self._test_records()
        vis_labels = np.array([r[1] for r in vis], dtype=np.int64)
        ir_labels = np.array([r[1] for r in ir], dtype=np.int64)
        vis_images, ir_images, test_images = self._arrays(vis, ir, test, vis_labels, ir_labels)
        if build_only:
            return
        self.train_visible, self.train_infrared = vis, ir
        self.num_classes = int(vis_labels.max()) + 1  # identities of the dataset, not of a draw
        # What training reads: the ground truth, a noise draw, or the labelled split (weak).
        self.labels = training_labels(
            self.supervision, vis_labels, ir_labels, dataset=self.name, trial=self.trial,
            cache_dir=self.cache_dir,
            every_identity_survives=self.spec.noise_keeps_every_identity)
        self.visible_labels, self.infrared_labels = self.labels.visible, self.labels.infrared
        self.visible_images, self.infrared_images = vis_images, ir_images
        self.test_images = test_images
        self.protocol = self._protocol(test, modality)
        log.info(
            "%s: %d ids, %d visible + %d infrared training images; %d test images, %d searches",
            self.name, self.num_classes, len(vis), len(ir), len(self.protocol.paths),
            len(self.protocol.searches),
        )

    def _protocol(self, records: list, modality: list[int]) -> TestProtocol:
        searches = self.spec.searches(self.root, self.trial, records, self.settings, self.shots)
        return TestProtocol(
            dataset=self.name, paths=[r[0] for r in records],
            pids=np.array([r[1] for r in records]), cams=np.array([r[2] for r in records]),
            modality=np.array(modality), searches=searches,
        )

    # ------------------------------------------------------------- supervision state
    def state_dict(self) -> dict:
        """Noisy/weak runs: the training labels (pseudo-labels included), for an exact resume."""
        if self.supervision is None or self.labels.mode == "full":
            return {}  # nothing to restore: a full run's checkpoints stay as they were
        return {"labels": self.labels.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Lightning's resume: refuses another draw or split, restores pseudo-labels."""
        if "labels" in state_dict:
            self.labels.load_state_dict(state_dict["labels"])

    def set_pseudo_labels(self, visible: np.ndarray, infrared: np.ndarray, epoch: int) -> None:
        """New pseudo-labels at the unlabelled rows (the loaders of the next epoch read them)."""
        self.labels.set_pseudo_labels(visible, infrared, epoch)

    # ------------------------------------------------------------------------ properties
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, dataset: Dataset, batch_size: int, persistent: bool = False,
                **kw) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(), **kw,
        )

    # ------------------------------------------------------------------------- loaders
    def _train_sampler(self) -> CrossModalityIdentitySampler:
        rank, world = self._rank_world()
        return CrossModalityIdentitySampler(
            self.visible_labels, self.infrared_labels, num_ids=self.num_ids,
            num_pos=self.num_pos, seed=self.seed, rank=rank, world_size=world,
            paired_only=self.labels.needs_pairing,
        )

    def _train_set(self) -> CrossModalityTrainSet:
        return CrossModalityTrainSet(
            self.visible_images, self.infrared_images, self.visible_labels,
            self.infrared_labels, self.transform,
        )

    def train_dataloader(self) -> DataLoader:
        """The training batches; its workers persist from one epoch to the next.

        Lightning builds this loader once per fit, so persistent workers are started once
        instead of at every epoch. They cannot change a batch: the sampler runs in the main
        process (``set_epoch`` reaches it before each epoch's iteration) and every sample's
        augmentation generator is seeded from its slot alone, whichever worker draws it.
        """
        _warn_large_pad(self.transform.pad, self.size[1])
        return DataLoader(
            self._train_set(), batch_sampler=self._train_sampler(),
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
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

    def unlabelled_dataloader(self, modality: int) -> DataLoader:
        """Un-augmented unlabelled training images of one modality (weak), this rank's stride.

        Items ``(x, label, row)``; the pseudo-label pass predicts a label for each row.
        """
        rank, world = self._rank_world()
        images, labels = ((self.visible_images, self.visible_labels) if modality == VISIBLE
                          else (self.infrared_images, self.infrared_labels))
        rows = self.labels.unlabelled(modality)[rank::world]
        subset = torch.utils.data.Subset(CachedImageSet(images, labels), rows.tolist())
        return self._loader(subset, self.test_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Each image the protocol needs once; under DDP split by stride with padding.

        Padding repeats rows so every rank has the same number of batches; the retrieval metric
        drops the repeats by protocol index.
        """
        return self._test_loader(persistent=False)  # one pass per trainer.test call

    def _test_loader(self, persistent: bool) -> DataLoader:
        rank, world = self._rank_world()
        needed = self.protocol.needed()
        per_rank = math.ceil(len(needed) / world)
        padded = np.resize(needed, per_rank * world)  # repeats from the start: dropped later
        mine = padded[rank::world]
        dataset = TestImageSet(self.test_images, self.protocol.modality, mine)
        return self._loader(dataset, self.test_batch_size, persistent=persistent, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        """The test images, for the evaluation every ``eval.every_n_epochs`` epochs.

        Built once per fit and iterated at every evaluation, so its workers persist; the test
        transform draws nothing at random.
        """
        return self._test_loader(persistent=True)
