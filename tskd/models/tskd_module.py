"""The TSKD training system: staged losses, per-epoch GMM confidences and prototypes, testing.

Epoch ``e`` (0-based) runs:
- ``e < loss.ce_only_epochs`` (warm-up): cross-entropy only; no GMM, no prototypes.
- stage I: soft-identity CE + batch-hard triplet + ``sm_w`` * self-mimic;
- stage II (``e >= loss.md_start``): + ``md_w`` * mutual distillation.
At the start of every post-warm-up epoch a no-grad pass over all training images (network in eval
mode, so BatchNorm statistics do not move) yields per-image CE, turned into confidences by a
two-component GMM per modality. During the epoch the pooled features are accumulated per
identity and modality slot; at its end they become the prototypes the next epoch mimics. Both are
reduced across DDP ranks so every rank holds identical values, and both are buffers, so a
checkpoint resumes exactly.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from tskd.data.protocol import INFRARED, VISIBLE
from tskd.errors import NonFiniteLossError
from tskd.losses import (
    BatchHardTriplet,
    MutualDistillationLoss,
    PrototypeBank,
    SelfMimicLoss,
    SoftIdentityLoss,
    gmm_confidence,
    per_sample_ce,
)
from tskd.models.components import TwoStreamNet
from tskd.models.schedule import lr_factor, stage

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class TSKDModule(pl.LightningModule):
    """Two-stream network + TSKD losses.

    Args:
        num_classes: Training identities.
        num_visible: Training visible images (size of the confidence buffer).
        num_infrared: Training infrared images.
        dataset: What the model is trained on: ``{"name", "root", "trial", "img_h", "img_w"}``;
            recorded in checkpoints so evaluation can refuse a mismatch.
        model: ``TwoStreamNet`` arguments (configs/model).
        loss: Loss weights and switches (configs/loss).
        optim: Optimiser and schedule (``optim`` in configs/train.yaml).
        eval: Test options (``flip``, ``rerank``).
        channels_last: Use the channels-last memory format (GPU speed).
        config: The resolved run config, stored in checkpoints for provenance.
    """

    def __init__(
        self,
        num_classes: int,
        num_visible: int,
        num_infrared: int,
        dataset: dict,
        model: dict,
        loss: dict,
        optim: dict,
        eval: dict | None = None,  # noqa: A002 - mirrors the config key
        channels_last: bool = False,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TwoStreamNet(num_classes, **model)
        self.loss_cfg, self.optim_cfg = dict(loss), dict(optim)
        self.eval_cfg = dict(eval or {})
        self.si = SoftIdentityLoss()
        self.triplet = BatchHardTriplet(margin=loss["margin"],
                                        per_modality=loss.get("triplet_per_modality", False))
        self.sm = SelfMimicLoss(metric=loss.get("sm_metric", "l1"))
        self.md = MutualDistillationLoss()
        self.bank = PrototypeBank(num_classes, num_slots=3, dim=self.net.feat_dim)
        self.register_buffer("conf_visible", torch.ones(num_visible))
        self.register_buffer("conf_infrared", torch.ones(num_infrared))
        self.retrieval = None  # a RetrievalMetric while a test/monitor pass runs
        self.test_summaries: list[dict] = []
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    # --------------------------------------------------------------------------- inference
    def forward(self, x: torch.Tensor, modality) -> torch.Tensor:
        """L2-normalised retrieval embedding ("fc") of images of the given modality."""
        return self.net(x, modality)

    def embed(self, x: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool, fc) features, averaged with the flipped image when ``eval.flip`` is on."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pool, fc = self.net.extract(x, modality)
        if self.eval_cfg.get("flip", False):
            pool2, fc2 = self.net.extract(x.flip(3), modality)
            pool, fc = F.normalize(pool + pool2, dim=1), F.normalize(fc + fc2, dim=1)
        return pool, fc

    # ----------------------------------------------------------------------------- stages
    @property
    def stage(self) -> str:
        return stage(self.current_epoch, self.loss_cfg.get("ce_only_epochs", 1),
                      self.loss_cfg["md_start"])

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer is None or self.trainer.world_size == 1:
            return t
        return self.trainer.strategy.reduce(t, reduce_op="sum")

    def on_train_epoch_start(self) -> None:
        if self.stage != "warmup" and self.loss_cfg.get("soft_identity", True):
            self._update_confidences()

    @torch.no_grad()
    def _update_confidences(self) -> None:
        """Per-image CE of every training image -> per-modality GMM confidences (all ranks)."""
        dm = self.trainer.datamodule
        was_training = self.net.training
        self.net.eval()  # BatchNorm running statistics must not see this pass
        gmm = dict(self.loss_cfg.get("gmm", {}))
        try:
            for modality, buf in ((VISIBLE, self.conf_visible), (INFRARED, self.conf_infrared)):
                losses = torch.zeros_like(buf)
                for x, y, idx in dm.confidence_dataloader(modality):
                    x, y = x.to(self.device), y.to(self.device)
                    with self.trainer.precision_plugin.forward_context():
                        logits = self.net.classify(x, modality)
                    losses[idx.to(self.device)] = per_sample_ce(logits.float(), y)
                # each image was seen by exactly one rank: a sum assembles the full vector
                losses = self._reduce_sum(losses)
                buf.copy_(gmm_confidence(losses, **gmm).to(buf))
        finally:
            self.net.train(was_training)
        # identical on every rank, so syncing only silences Lightning's DDP warning
        self.log("train/confidence_visible", self.conf_visible.mean(), sync_dist=True)
        self.log("train/confidence_infrared", self.conf_infrared.mean(), sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if self.stage != "warmup":
            self.bank.finalize(reduce=self._reduce_sum)

    def on_train_end(self) -> None:
        """Under DDP, check that every rank ends with the same confidences and prototypes."""
        if self.trainer.world_size == 1:
            return
        for name in ("conf_visible", "conf_infrared", "bank.prototypes", "bank.valid"):
            local = self.get_buffer(name).float()
            gathered = self.all_gather(local)  # (world, ...)
            if not torch.equal(gathered.amin(0), gathered.amax(0)):
                raise RuntimeError(
                    f"DDP ranks disagree on {name} after training: the cross-rank reduction of "
                    "confidences/prototypes is broken; please report this with your trainer config."
                )

    # --------------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        vis1, vis2, ir, labels, vis_idx, ir_idx = batch
        b = labels.shape[0]
        x_vis = torch.cat([vis1, vis2])
        if self.hparams.channels_last:
            x_vis = x_vis.contiguous(memory_format=torch.channels_last)
            ir = ir.contiguous(memory_format=torch.channels_last)
        f, logits = self.net.forward_train(x_vis, ir)  # f: (3B, C) ordered [view1; view2; ir]
        f, logits = f.float(), logits.float()
        labels3 = labels.repeat(3)
        slots = torch.arange(3, device=f.device).repeat_interleave(b)  # 0 view1, 1 view2, 2 ir
        cur = self.stage
        terms: dict[str, torch.Tensor] = {}
        if cur == "warmup":
            terms["ce"] = self.si(logits, labels3)
            total = terms["ce"]
        else:
            conf_v = self.conf_visible[vis_idx]
            w = torch.cat([conf_v, conf_v, self.conf_infrared[ir_idx]])
            modality3 = (slots == 2).long()
            terms["ce"] = self.si(logits, labels3, w)
            terms["tri"] = self.triplet(f, labels3, modality3)
            terms["sm"] = self.sm(f, labels3, slots, w, self.bank)
            total = terms["ce"] + terms["tri"] + self.loss_cfg["sm_w"] * terms["sm"]
            if cur == "II":
                terms["md"] = self.md(f[:b], f[b : 2 * b], f[2 * b :], labels)
                total = total + self.loss_cfg["md_w"] * terms["md"]
            self.bank.accumulate(f.detach(), labels3, slots, w)
        if not torch.isfinite(total):
            self._raise_non_finite(batch_idx, labels, vis_idx, ir_idx, terms)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=True, on_step=True, on_epoch=True,
                     batch_size=b, sync_dist=True)
        self.log("train/loss", total, on_step=True, on_epoch=True, batch_size=b, sync_dist=True)
        self.log("train/stage", float({"warmup": 0, "I": 1, "II": 2}[cur]), on_step=False,
                 on_epoch=True, batch_size=b, sync_dist=True)
        return total

    def _raise_non_finite(self, batch_idx, labels, vis_idx, ir_idx, terms) -> None:
        values = {k: float(v.detach()) for k, v in terms.items()}
        raise NonFiniteLossError(
            f"non-finite loss at epoch {self.current_epoch}, global step {self.global_step}, "
            f"batch {batch_idx}: terms {values}; identities {sorted(set(labels.tolist()))}, "
            f"visible rows {vis_idx.tolist()}, infrared rows {ir_idx.tolist()}. Training stopped; "
            "lower optim.lr_head/optim.lr_backbone or check those images, then resume from "
            "checkpoints/last.ckpt with ckpt=..."
        )

    def configure_optimizers(self):
        o = self.optim_cfg
        groups = [
            {"params": list(self.net.backbone_parameters()), "lr": o["lr_backbone"],
             "name": "backbone"},
            {"params": list(self.net.head_parameters()), "lr": o["lr_head"], "name": "head"},
        ]
        opt = torch.optim.SGD(groups, lr=o["lr_head"], momentum=o["momentum"],
                              nesterov=o["nesterov"], weight_decay=o["weight_decay"])
        warm, milestones, gamma = o["warmup_epochs"], tuple(o["milestones"]), o["gamma"]
        sched = LambdaLR(opt, lambda e: lr_factor(e, warm, milestones, gamma))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ---------------------------------------------------------------------------- testing
    def _start_retrieval(self) -> None:
        from tskd.metrics.retrieval import RetrievalMetric

        protocol = self.trainer.datamodule.protocol
        self.retrieval = RetrievalMetric(protocol, rerank=self.eval_cfg.get("rerank", False))
        self.retrieval.to(self.device)

    def _retrieval_step(self, batch) -> None:
        x, modality, index = batch
        pool, fc = self.embed(x, modality)
        protocol = self.retrieval.protocol
        rows = index.cpu().numpy()
        as_t = lambda a: torch.as_tensor(a[rows], device=self.device)  # noqa: E731
        self.retrieval.update(pool.float(), fc.float(), as_t(protocol.pids),
                              as_t(protocol.cams), modality, index)

    def on_test_epoch_start(self) -> None:
        self._start_retrieval()

    def test_step(self, batch, batch_idx: int) -> None:
        self._retrieval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.test_summaries = self.retrieval.compute()
        self._log_summaries("test", self.test_summaries)
        self.retrieval = None

    def on_validation_epoch_start(self) -> None:
        self._start_retrieval()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._retrieval_step(batch)

    def on_validation_epoch_end(self) -> None:
        # test-protocol curves only: never used to pick a checkpoint
        self._log_summaries("monitor", self.retrieval.compute())
        self.retrieval = None

    def _log_summaries(self, prefix: str, summaries: list[dict]) -> None:
        for s in summaries:
            setting = s["mode"] or s["direction"]
            for key in ("rank1", "mAP", "mINP"):
                self.log(f"{prefix}/{setting}_{s['feature']}_{key}", float(s["mean"][key]),
                         rank_zero_only=True, sync_dist=False)

    # ------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        hp = self.hparams
        checkpoint["tskd"] = {
            "format": CHECKPOINT_FORMAT,
            "dataset": hp.dataset["name"],
            "trial": hp.dataset.get("trial"),
            "num_classes": hp.num_classes,
            "img_size": [hp.dataset["img_h"], hp.dataset["img_w"]],
            "backbone": hp.model["backbone"],
        }
