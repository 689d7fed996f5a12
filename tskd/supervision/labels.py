"""The training labels a run sees under ``supervision=full|noisy|weak``, and the truth they hide.

:func:`training_labels` turns the dataset's ground-truth training labels into the labels that
training reads (the sampler, the losses, the GMM pass, the prototypes):

- ``full``: the ground truth;
- ``noisy``: DART's draw (:mod:`tskd.supervision.noise`), or a DART-format draw read from
  ``supervision.noise_file``;
- ``weak``: the ground truth at the labelled rows of the split (:mod:`tskd.supervision.split`),
  -1 elsewhere until the first pseudo-labels (:meth:`TrainingLabels.set_pseudo_labels`).

The ground truth stays in :class:`Truth`, whose only readers are the diagnostics: it answers
"was this label right?" and is never handed to anything that trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tskd.core.errors import CheckpointError, DatasetError
from tskd.supervision.config import SupervisionConfig
from tskd.supervision.draws import LabelSplit, NoiseDraw, ceil_count
from tskd.supervision.label_files import read_noise_files
from tskd.supervision.noise import cached_noise
from tskd.supervision.split import draw_split

UNLABELLED = -1  # a weak row before its first pseudo-label: never drawn by the sampler


@dataclass(frozen=True)
class Truth:
    """Ground-truth training labels, for diagnostics only (nothing that trains reads them)."""

    visible: np.ndarray
    infrared: np.ndarray


@dataclass
class TrainingLabels:
    """The labels training reads, per modality, and what the diagnostics need to judge them.

    Attributes:
        mode: ``full``, ``noisy`` or ``weak``.
        visible: (N_v,) int64 current training labels (weak: -1 at rows not labelled yet).
        infrared: (N_i,) int64.
        truth: The ground truth (diagnostics only).
        noise: The noise draw (``noisy``).
        split: The labelled/unlabelled split (``weak``).
        pseudo_epoch: ``weak``: the epoch after which the current pseudo-labels were made, or
            None before the first ones.
    """

    mode: str
    visible: np.ndarray
    infrared: np.ndarray
    truth: Truth = field(repr=False)
    noise: NoiseDraw | None = None
    split: LabelSplit | None = None
    pseudo_epoch: int | None = None

    @property
    def needs_pairing(self) -> bool:
        """Whether a label class can miss a modality (the sampler then draws paired ids only)."""
        return self.mode != "full"

    def unlabelled(self, modality: int) -> np.ndarray:
        """Rows of ``modality`` (0 visible, 1 infrared) that get pseudo-labels (weak)."""
        if self.split is None:
            return np.zeros(0, dtype=np.int64)
        return self.split.visible_unlabelled if modality == 0 else self.split.infrared_unlabelled

    def set_pseudo_labels(self, visible: np.ndarray, infrared: np.ndarray, epoch: int) -> None:
        """Write predicted labels at the unlabelled rows only; labelled rows keep the truth.

        Args:
            visible: (N_v,) predictions (only the unlabelled rows are read).
            infrared: (N_i,) predictions.
            epoch: The epoch whose network made them.
        """
        if self.mode != "weak":
            raise ValueError(f"pseudo-labels are for supervision=weak, not {self.mode}")
        for current, predicted, rows in ((self.visible, visible, self.unlabelled(0)),
                                         (self.infrared, infrared, self.unlabelled(1))):
            predicted = np.asarray(predicted, dtype=np.int64)
            if predicted.shape != current.shape:
                raise ValueError(f"{predicted.shape} predictions for {current.shape} labels")
            current[rows] = predicted[rows]
        self.pseudo_epoch = int(epoch)

    def realised_noise(self) -> tuple[float, float]:
        """Share of visible and infrared training labels that differ from the truth."""
        return (float(np.mean(self.visible != self.truth.visible)),
                float(np.mean(self.infrared != self.truth.infrared)))

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        """Plain values for the checkpoint (lists: loadable with ``weights_only=True``)."""
        state = {"mode": self.mode, "visible": self.visible.tolist(),
                 "infrared": self.infrared.tolist(), "pseudo_epoch": self.pseudo_epoch}
        if self.split is not None:
            state["visible_labelled"] = self.split.visible_labelled.tolist()
            state["infrared_labelled"] = self.split.infrared_labelled.tolist()
        return state

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Restore a resumed run's labels, refusing a checkpoint made with another draw/split.

        Raises:
            CheckpointError: Naming the supervision key whose draw differs and the fix.
        """
        if state.get("mode") != self.mode:
            raise CheckpointError(
                f"{source} was trained with supervision={state.get('mode')} but this run uses "
                f"supervision={self.mode}; resume with the checkpoint's supervision settings")
        if self.mode == "noisy":
            same = (np.array_equal(state["visible"], self.visible)
                    and np.array_equal(state["infrared"], self.infrared))
            if not same:
                raise CheckpointError(
                    f"{source} was trained on another noise draw than the one this run makes "
                    "(supervision.label_noise, supervision.noise_seed or supervision.noise_file "
                    "differ, or the noise file changed); resume with the checkpoint's draw")
        if self.mode == "weak":
            same = (np.array_equal(state["visible_labelled"], self.split.visible_labelled)
                    and np.array_equal(state["infrared_labelled"],
                                       self.split.infrared_labelled))
            if not same:
                raise CheckpointError(
                    f"{source} was trained on another labelled split than the one this run "
                    "makes (supervision.label_ratio, supervision.label_split or "
                    "supervision.label_seed differ); resume with the checkpoint's split")
            self.visible[:] = state["visible"]
            self.infrared[:] = state["infrared"]
            self.pseudo_epoch = state["pseudo_epoch"]


def training_labels(supervision: SupervisionConfig | None, visible_true: np.ndarray,
                    infrared_true: np.ndarray, *, dataset: str, trial: int | None,
                    cache_dir: Path, every_identity_survives: bool = False) -> TrainingLabels:
    """The labels training reads under the ``supervision`` settings (module docstring).

    Args:
        supervision: The ``supervision`` config, or None for ``full``.
        visible_true: (N_v,) ground-truth training labels.
        infrared_true: (N_i,) ground-truth training labels.
        dataset: Dataset name (part of the noise cache key).
        trial: The split (RegDB) or None (part of the noise cache key).
        cache_dir: Where the noise draw is cached (beside the image caches).
        every_identity_survives: The dataset's noise rule (RegDB: every identity keeps a label
            in each modality).
    """
    vt = np.asarray(visible_true, dtype=np.int64)
    it = np.asarray(infrared_true, dtype=np.int64)
    truth = Truth(vt.copy(), it.copy())
    mode = "full" if supervision is None else supervision.name
    if mode == "full":
        return TrainingLabels("full", vt.copy(), it.copy(), truth)
    if mode == "noisy":
        draw = _noise_draw(supervision, vt, it, dataset=dataset, trial=trial,
                           cache_dir=cache_dir, every_identity_survives=every_identity_survives)
        return TrainingLabels("noisy", draw.visible.copy(), draw.infrared.copy(), truth,
                              noise=draw)
    if mode == "weak":
        split = draw_split(vt, it, supervision.label_ratio, supervision.label_split,
                           supervision.label_seed)
        vis = np.full_like(vt, UNLABELLED)
        ir = np.full_like(it, UNLABELLED)
        vis[split.visible_labelled] = vt[split.visible_labelled]
        ir[split.infrared_labelled] = it[split.infrared_labelled]
        return TrainingLabels("weak", vis, ir, truth, split=split)
    raise DatasetError(f"supervision.name={mode!r}: use full, noisy or weak")


def _noise_draw(supervision: SupervisionConfig, vt: np.ndarray, it: np.ndarray, *, dataset: str,
                trial: int | None, cache_dir: Path, every_identity_survives: bool) -> NoiseDraw:
    rate = float(supervision.label_noise)
    if not supervision.noise_file:
        return cached_noise(Path(cache_dir), dataset, trial, vt, it, rate,
                            int(supervision.noise_seed),
                            every_identity_survives=every_identity_survives)
    prefix = Path(supervision.noise_file)
    draw = read_noise_files(prefix, vt, it)
    # The rate names the run in tables and sweeps: a file drawn at another rate would be
    # reported under the wrong one.
    for name, rows, n in (("visible", draw.visible_noisy, len(vt)),
                          ("infrared", draw.infrared_noisy, len(it))):
        if len(rows) != ceil_count(rate, n):
            raise DatasetError(
                f"supervision.noise_file={prefix} replaces {len(rows)} of {n} {name} labels "
                f"({len(rows) / n:.3f}), not ceil({rate} * {n}) = {ceil_count(rate, n)} as "
                f"supervision.label_noise={rate} says; set supervision.label_noise to the "
                "file's rate")
    return draw
