"""What a noisy or weak run shows of itself: its draw on disk, diagnostics per epoch, a figure.

:class:`SupervisionMonitor` is the only reader of the ground truth during training
(``labels.truth``); it writes nothing that training reads back, except under the documented
switch ``supervision.labelled_weight_one`` (weak: labelled images get confidence 1, which needs
the split, not the truth).

- Fit start (rank 0): the draw in the run dir, ``supervision/``: the noise draw in DART's
  eight-array format (``noise_*``), or the weak split (``split_*``); the realised noise rate
  per modality is logged.
- Every epoch with confidences (after :class:`~tskd.models.epoch_passes.ConfidencePass`),
  and for weak runs every epoch after the first pseudo-labels (without the ``w`` values when
  there are no confidences, e.g. ``loss=baseline``). Noisy, per view: share of clean samples
  with w > 0.5, of noisy ones with w < 0.5, AUC of w for clean vs noisy, each group's mean w
  (``noise/<view>_<key>``); weak, per modality: pseudo-label accuracy, share changed since the
  last epoch, identities present, mean w of right and wrong pseudo-labels
  (``weak/<modality>_<key>``).
- The figure: per-sample loss histograms split by group (clean/noisy, right/wrong) with the
  fitted two-component mixture over them, for the last epoch with confidences
  (``loss_histogram.png``) and every epoch in ``supervision.plot_epochs``
  (``supervision/loss_histogram_epoch<e>.png``). Weak runs also write their last pseudo-labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from tskd.losses.confidence import fit_loss_mixture, fit_visible_mixture
from tskd.models.epoch_passes import CE_ONLY_STAGES, ConfidencePass
from tskd.models.pseudo_label_pass import require_same_on_ranks
from tskd.supervision.diagnostics import noise_diagnostics, weak_diagnostics
from tskd.supervision.label_files import (
    write_noise_files,
    write_pseudo_label_files,
    write_split_files,
)
from tskd.supervision.loss_figure import LossPanel, loss_histograms_png

log = logging.getLogger(__name__)

VIEWS = ("view1", "view2", "infrared")


class SupervisionMonitor(pl.Callback):
    """Diagnostics, files and figure of a noisy or weak run (module docstring).

    Args:
        source: The datamodule (its ``labels``: :class:`~tskd.supervision.labels.TrainingLabels`).
        out_dir: The run dir.
        confidence_pass: The run's confidence pass (its last per-image losses feed the figure).
        labelled_weight_one: ``supervision.labelled_weight_one``.
        plot_epochs: ``supervision.plot_epochs``.
        gmm: ``loss.gmm`` (the mixture drawn is the one the confidences came from).
    """

    def __init__(self, source, out_dir: str | Path, confidence_pass: ConfidencePass, *,
                 labelled_weight_one: bool = False, plot_epochs=(), gmm: dict | None = None
                 ) -> None:
        self.source, self.out_dir = source, Path(out_dir)
        self.confidence_pass = confidence_pass
        self.labelled_weight_one = bool(labelled_weight_one)
        self.plot_epochs = {int(e) for e in plot_epochs}
        self.gmm = dict(gmm or {})
        self._previous: dict[str, np.ndarray] = {}  # weak: labels at the last epoch's start
        self._last_epoch: int | None = None  # the last epoch with confidences
        self._epoch_labels: tuple[np.ndarray, np.ndarray] | None = None  # its labels

    @property
    def labels(self):
        return self.source.labels

    # --------------------------------------------------------------------------- files
    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        labels, folder = self.labels, self.out_dir / "supervision"
        # every rank drew (or read) the labels itself: they must be the same draw and split
        require_same_on_ranks(trainer, "visible training labels", labels.visible)
        require_same_on_ranks(trainer, "infrared training labels", labels.infrared)
        if trainer.global_rank != 0:
            return
        truth = labels.truth
        if labels.mode == "noisy":
            written = write_noise_files(labels.noise, truth.visible, truth.infrared,
                                        folder / "noise")
            rates = labels.realised_noise()
            log.info("noisy labels: %.4f of the visible and %.4f of the infrared training "
                     "labels replaced; the draw: %s", rates[0], rates[1], written[0].parent)
        elif labels.mode == "weak":
            write_split_files(labels.split, truth.visible, truth.infrared, folder / "split")
            fractions = labels.split.fractions()
            log.info("weak supervision: %.4f of the visible and %.4f of the infrared training "
                     "images labelled; the split: %s", fractions["visible"],
                     fractions["infrared"], folder)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        labels = self.labels
        if labels.mode == "weak":
            write_pseudo_label_files(self.out_dir / "supervision" / "split", labels.visible,
                                     labels.infrared)
        if self._last_epoch is not None:
            self.figure(self.out_dir / "loss_histogram.png", self._last_epoch)

    # ----------------------------------------------------------------------- per epoch
    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        has_w = (module.stage not in CE_ONLY_STAGES
                 and self.confidence_pass.last_losses is not None)
        # weak: pseudo-label quality is worth logging with or without confidences (a
        # loss=baseline run has none), from the first refresh on
        pseudo = self.labels.mode == "weak" and self.labels.pseudo_epoch is not None
        if not (has_w or pseudo):
            return
        if has_w and self.labelled_weight_one and self.labels.split is not None:
            self._force_labelled_confidence(module)
        values = self.diagnostics(module if has_w else None)
        for name, value in values.items():
            module.log(name, float(value), on_step=False, on_epoch=True, sync_dist=True)
        if not has_w:
            return
        epoch = module.current_epoch
        self._last_epoch = epoch
        # weak labels change at the epoch's end: the figure groups by the labels w was fit on
        self._epoch_labels = (self.labels.visible.copy(), self.labels.infrared.copy())
        if epoch in self.plot_epochs and trainer.global_rank == 0:
            self.figure(self.out_dir / "supervision" / f"loss_histogram_epoch{epoch}.png", epoch)

    def _force_labelled_confidence(self, module: pl.LightningModule) -> None:
        """``labelled_weight_one``: labelled rows get w = 1 (the same on every rank)."""
        split = self.labels.split
        for buf, rows in zip(module.confidences, (split.visible_labelled,
                                                  split.visible_labelled,
                                                  split.infrared_labelled)):
            buf[torch.as_tensor(rows, device=buf.device)] = 1.0

    def diagnostics(self, module: pl.LightningModule | None) -> dict[str, float]:
        """This epoch's values (module docstring), keyed as they are logged.

        ``module`` None: no confidences yet (weak only: the values without ``w``).
        """
        labels, truth = self.labels, self.labels.truth
        w = ([c.detach().cpu().numpy() for c in module.confidences] if module is not None
             else [None, None, None])
        current = (labels.visible, labels.visible, labels.infrared)
        true = (truth.visible, truth.visible, truth.infrared)
        out = {}
        if labels.mode == "noisy":
            for view, wv, lab, tru in zip(VIEWS, w, current, true):
                for key, value in noise_diagnostics(wv, lab == tru).items():
                    out[f"noise/{view}_{key}"] = value
        elif labels.mode == "weak":
            for m, name in ((0, "visible"), (2, "infrared")):
                unlabelled = labels.unlabelled(0 if m == 0 else 1)
                values = weak_diagnostics(current[m], true[m], unlabelled,
                                          previous=self._previous.get(name), w=w[m])
                out.update({f"weak/{name}_{k}": v for k, v in values.items()})
                self._previous[name] = current[m].copy()
        return out

    # -------------------------------------------------------------------------- figure
    def figure(self, path: Path, epoch: int) -> Path:
        """The loss histograms of the last confidence pass, split by group, with the mixture."""
        labels, truth = self.labels, self.labels.truth
        l1, l2, l_ir = (t.detach().float().cpu() for t in self.confidence_pass.last_losses)
        visible, infrared = self._epoch_labels or (labels.visible, labels.infrared)
        right_vis = visible == truth.visible
        right_ir = infrared == truth.infrared
        if torch.equal(l1, l2):  # gmm_pass=eval: one loss per visible image
            vis_fit = fit_loss_mixture(l1, **self.gmm)
            vis = LossPanel("visible", l1, right_vis, vis_fit)
        else:  # the authors' fit: both views, each min-max normalised, one mixture
            vis_fit, both = fit_visible_mixture(l1, l2, **self.gmm)
            vis = LossPanel("visible (both views, normalised)", both,
                            np.concatenate([right_vis, right_vis]), vis_fit,
                            "normalised per-sample loss")
        ir = LossPanel("infrared", l_ir, right_ir, fit_loss_mixture(l_ir, **self.gmm))
        names = ("clean", "noisy") if labels.mode == "noisy" else ("right", "wrong")
        title = f"supervision={labels.mode}, epoch {epoch}: per-sample CE and the fitted mixture"
        return loss_histograms_png(path, [vis, ir], names, title)
