"""The TSKD training system: staged losses, per-epoch GMM confidences and prototypes, testing.

Epoch ``e`` (0-based) runs:
- ``e < loss.ce_only_epochs`` (warm-up): cross-entropy only; no GMM, no prototypes.
- stage I: soft-identity CE + batch-hard triplet + ``sm_w`` * self-mimic;
- stage II (``e >= loss.md_start``): + ``md_w`` * mutual distillation.
Around every post-warm-up epoch two no-grad passes run, the callbacks of
:mod:`tskd.models.epoch_passes`: at its start :class:`~tskd.models.epoch_passes.ConfidencePass`
(per-image CE -> GMM confidences, one per visible view and one per infrared image, written with
:meth:`TSKDModule.set_confidences`), at its end :class:`~tskd.models.epoch_passes.PrototypePass`
(the epoch's slots again into the prototype bank; ``loss.prototype_pass=false`` accumulates from
the training forward instead). The module owns the state they fill and checks at the start of
training that the callbacks its losses need are attached. Sums are reduced across DDP ranks, so
every rank holds the values one process would compute over the same batches; confidences and
prototypes are buffers and the running sums are the bank's extra state, so a checkpoint resumes
exactly. Testing: ``test_step`` returns the batch's embeddings and
:class:`~tskd.models.protocol_evaluation.ProtocolEvaluation` (a callback) runs the protocol's
searches. Methods follow the Lightning style guide's order. docs/method.md has every formula.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import LambdaLR

from tskd.config import EvalPassOptions, LossConfig, ModelConfig, OptimConfig
from tskd.core.errors import InputError, NonFiniteLossError
from tskd.core.schema import to_plain
from tskd.data.config import DatasetConfig
from tskd.features.protocol import flip_averaged
from tskd.losses import (
    BatchHardTriplet,
    MutualDistillationLoss,
    PrototypeBank,
    RobustTriplet,
    SelfMimicLoss,
    SoftIdentityLoss,
)
from tskd.models.components import TwoStreamNet
from tskd.models.epoch_passes import (
    CE_ONLY_STAGES,
    GMM_PASSES,
    ConfidencePass,
    PrototypePass,
    needs_confidence_pass,
    needs_prototype_pass,
    sum_over_ranks,
    view_confidences,
    view_slots,
)
from tskd.models.protocol_evaluation import ProtocolEvaluation
from tskd.models.schedule import lr_factor, stage
from tskd.supervision.config import SupervisionConfig

CHECKPOINT_FORMAT = 2  # 2: per-view confidences, bank sums as extra state


class TSKDModule(pl.LightningModule):
    """Two-stream network + TSKD losses.

    Args:
        num_classes: Training identities.
        num_visible: Training visible images (size of the confidence buffer).
        num_infrared: Training infrared images.
        dataset: What the model is trained on (``name``, ``root``, ``trial`` and image size are
            recorded in checkpoints so evaluation can refuse a mismatch).
        model: The network (configs/model).
        loss: Loss weights and switches (configs/loss).
        optim: Optimiser and schedule (``optim`` in configs/train.yaml).
        eval: Test options (``flip``); None: no flip. Re-ranking is the test callback's.
        channels_last: Use the channels-last memory format (GPU speed).
        config: The resolved run config (plain values), stored in checkpoints for provenance.
        supervision: The ``supervision`` settings (configs/supervision); None: full labels.
            Weak: ``pretrain_epochs`` of CE at ``optim`` lr x ``pretrain_lr_factor`` come
            before the main run. ``robust_triplet``: DART's robust triplet replaces the
            batch-hard triplet.

    The hyper-parameters a checkpoint stores are plain values (dicts of the typed arguments),
    so it loads with ``torch.load(weights_only=True)``;
    :func:`tskd.checkpoints.loading.build_module` turns them back into the typed arguments.
    """

    # ---------------------------------------------------------------- system definition
    def __init__(
        self,
        num_classes: int,
        num_visible: int,
        num_infrared: int,
        dataset: DatasetConfig,
        model: ModelConfig,
        loss: LossConfig,
        optim: OptimConfig,
        eval: EvalPassOptions | None = None,  # noqa: A002 - mirrors the config key
        channels_last: bool = False,
        config: dict | None = None,
        supervision: SupervisionConfig | None = None,
    ) -> None:
        super().__init__()
        flip = eval.flip if eval is not None else False
        self.save_hyperparameters({
            "num_classes": num_classes, "num_visible": num_visible, "num_infrared": num_infrared,
            "dataset": {k: getattr(dataset, k) for k in ("name", "root", "trial", "img_h",
                                                         "img_w")},
            "model": to_plain(model), "loss": to_plain(loss), "optim": to_plain(optim),
            "eval": {"flip": flip}, "channels_last": channels_last,
            "config": config,
            "supervision": None if supervision is None else to_plain(supervision),
        })
        self.net = TwoStreamNet(
            num_classes, backbone=model.backbone, pretrained=model.pretrained,
            last_stride=model.last_stride, non_local=model.non_local,
            nl_inter_channels=model.nl_inter_channels, gem_p=model.gem_p,
        )
        self.loss_cfg, self.optim_cfg, self.flip = loss, optim, bool(flip)
        weak = supervision is not None and supervision.name == "weak"
        self.pretrain_epochs = supervision.pretrain_epochs if weak else 0
        self.pretrain_lr_factor = supervision.pretrain_lr_factor if weak else 1.0
        if loss.gmm_pass not in GMM_PASSES:
            raise ValueError(f"loss.gmm_pass={loss.gmm_pass!r}: use one of {GMM_PASSES}")
        self.si = SoftIdentityLoss()
        # supervision.robust_triplet: DART's triplet for noisy correspondences (reads w)
        self.robust_triplet = supervision is not None and supervision.robust_triplet
        triplet = RobustTriplet if self.robust_triplet else BatchHardTriplet
        self.triplet = triplet(margin=loss.margin, per_modality=loss.triplet_per_modality)
        self.sm = SelfMimicLoss(metric=loss.sm_metric, form=loss.sm_form)
        self.md = MutualDistillationLoss(form=loss.md_form, bandwidth=loss.md_bandwidth)
        self.bank = PrototypeBank(num_classes, num_slots=3, dim=self.net.feat_dim,
                                  norm=loss.prototype_norm)
        # one confidence per training image and view: w1, w2 (visible), wr (infrared)
        self.register_buffer("conf_view1", torch.ones(num_visible))
        self.register_buffer("conf_view2", torch.ones(num_visible))
        self.register_buffer("conf_infrared", torch.ones(num_infrared))
        if channels_last:
            self.net.use_channels_last()  # the net formats every input it is given
        if model.compile:
            self._compile_training_forward()

    def _compile_training_forward(self) -> None:
        """``model.compile``: torch.compile the network's training forward.

        Only ``forward_train`` is compiled: it is what the training step and both per-epoch
        passes run, nearly all of an epoch's device time. It is replaced on the instance, so
        ``self.net`` stays the plain module and checkpoints keep their parameter names (a
        compiled ``nn.Module`` wrapper would prefix them with ``_orig_mod.``); the test-time
        ``extract`` stays eager, so evaluation needs no compilation.
        """
        self.net.forward_train = torch.compile(self.net.forward_train)

    # ----------------------------------------------------------------------- inference
    def forward(self, x: torch.Tensor, modality) -> torch.Tensor:
        """L2-normalised retrieval embedding ("fc") of images of the given modality."""
        return self.net(x, modality)

    def embed(self, x: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool, fc) features, averaged with the flipped image when ``eval.flip`` is on."""
        if self.flip:
            return flip_averaged(self.net.extract, x, modality)
        return self.net.extract(x, modality)

    # ----------------------------------------------------- state the epoch passes fill
    @property
    def stage(self) -> str:
        return stage(self.current_epoch, self.loss_cfg.ce_only_epochs, self.loss_cfg.md_start,
                     self.pretrain_epochs)

    @property
    def confidences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image confidences (view 1, view 2, infrared)."""
        return self.conf_view1, self.conf_view2, self.conf_infrared

    def set_confidences(self, view1: torch.Tensor, view2: torch.Tensor,
                        infrared: torch.Tensor) -> None:
        """New per-image confidences (the confidence pass's output, identical on every rank)."""
        for buf, w in zip(self.confidences, (view1, view2, infrared)):
            buf.copy_(w.to(buf))
        # identical on every rank, so syncing only silences Lightning's DDP warning
        for name, buf in zip(("view1", "view2", "infrared"), self.confidences):
            self.log(f"train/confidence_{name}", buf.mean(), sync_dist=True)

    # ------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Refuse to train without the pass callbacks these loss settings need."""
        needed = [cls for cls, needs in ((ConfidencePass, needs_confidence_pass),
                                         (PrototypePass, needs_prototype_pass))
                  if needs(self.loss_cfg)]
        _require_callbacks(self.trainer, needed, "tskd.models.epoch_passes.epoch_pass_callbacks"
                           "(datamodule)")

    def on_train_epoch_start(self) -> None:
        # a per-epoch constant: logged once here instead of once per step; identical on every
        # rank, so syncing only silences Lightning's DDP warning
        self.log("train/stage", float({"pretrain": -1, "warmup": 0, "I": 1, "II": 2}[self.stage]),
                 on_step=False, on_epoch=True, sync_dist=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        vis1, vis2, ir, labels, vis_idx, ir_idx = batch
        b = labels.shape[0]
        # f: (3B, C) ordered [view1; view2; ir]
        f, logits = self.net.forward_train(torch.cat([vis1, vis2]), ir)
        f, logits = f.float(), logits.float()
        labels3 = labels.repeat(3)
        slots = view_slots(b, f.device)  # 0 view1, 1 view2, 2 ir
        cur = self.stage
        terms: dict[str, torch.Tensor] = {}
        if cur in CE_ONLY_STAGES:
            terms["ce"] = self.si(logits, labels3)
            total = terms["ce"]
        else:
            w = view_confidences(self.confidences, vis_idx, ir_idx)  # (3B,)
            modality3 = (slots == 2).long()
            terms["ce"] = self.si(logits, labels3, w)
            if self.robust_triplet:
                terms["tri"] = self.triplet(f, labels3, modality3, w, logits)
            else:
                terms["tri"] = self.triplet(f, labels3, modality3)
            terms["sm"] = self.sm(f, labels3, slots, w, self.bank)
            total = terms["ce"] + terms["tri"] + self.loss_cfg.sm_w * terms["sm"]
            if cur == "II":
                terms["md"] = self.md(f[:b], f[b : 2 * b], f[2 * b :], labels)
                total = total + self.loss_cfg.md_w * terms["md"]
            if not self.loss_cfg.prototype_pass:
                self.bank.accumulate(f.detach(), labels3, slots, w)
        # The one host synchronisation a step makes on purpose: the step must stop before the
        # optimiser writes NaN into the weights (which the next checkpoint would keep), and the
        # error names this batch.
        if not torch.isfinite(total):
            self._raise_non_finite(batch_idx, labels, vis_idx, ir_idx, terms)
        self._log_terms({**terms, "loss": total}, b)
        return total

    def _log_terms(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """Per-step values of this rank as ``train/<name>``, synced epoch means ``_epoch``.

        Why two keys: Lightning reduces an ``on_step`` value logged with ``sync_dist=True``
        across ranks at every step (one collective per term and step under DDP), although only
        the epoch aggregates need the other ranks. The epoch keys (``train/ce_epoch``, ...) are
        the same values as before; the step keys hold this rank's value (before: the rank mean,
        named ``train/ce_step``). On one device nothing changes but the step keys' names.
        """
        for name, value in values.items():
            value = value.detach()
            self.log(f"train/{name}", value, prog_bar=name != "loss", on_step=True,
                     on_epoch=False, batch_size=batch_size)
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=True)

    def _raise_non_finite(self, batch_idx, labels, vis_idx, ir_idx, terms) -> None:
        values = {k: float(v.detach()) for k, v in terms.items()}
        raise NonFiniteLossError(
            f"non-finite loss at epoch {self.current_epoch}, global step {self.global_step}, "
            f"batch {batch_idx}: terms {values}; identities {sorted(set(labels.tolist()))}, "
            f"visible rows {vis_idx.tolist()}, infrared rows {ir_idx.tolist()}. Training stopped; "
            "lower optim.lr_head/optim.lr_backbone or check those images, then resume from "
            "checkpoints/last.ckpt with ckpt=..."
        )

    def on_train_epoch_end(self) -> None:
        """The epoch's prototype sums (the prototype pass's, run just before) -> prototypes."""
        if self.stage not in CE_ONLY_STAGES:
            self.bank.finalize(reduce=lambda t: sum_over_ranks(self.trainer, t))

    def on_train_end(self) -> None:
        """Under DDP, check that every rank ends with the same confidences and prototypes."""
        if self.trainer.world_size == 1:
            return
        for name in ("conf_view1", "conf_view2", "conf_infrared", "bank.prototypes",
                     "bank.valid"):
            local = self.get_buffer(name).float()
            gathered = self.all_gather(local)  # (world, ...)
            if not torch.equal(gathered.amin(0), gathered.amax(0)):
                raise RuntimeError(
                    f"DDP ranks disagree on {name} after training: the cross-rank reduction of "
                    "confidences/prototypes is broken; please report this with your trainer config."
                )

    # ---------------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Monitor passes embed like a test pass (ProtocolEvaluation logs the curves)."""
        return self._embed_test_batch(batch)

    # ---------------------------------------------------------------------------- test
    def on_test_start(self) -> None:
        _require_callbacks(self.trainer, [ProtocolEvaluation],
                           "tskd.models.protocol_evaluation.ProtocolEvaluation(datamodule.protocol)")

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """One test-loader batch ``(x, modality, index)`` -> its embeddings, for the protocol."""
        return self._embed_test_batch(batch)

    def _embed_test_batch(self, batch) -> dict[str, torch.Tensor]:
        x, modality, index = batch
        pool, fc = self.embed(x, modality)
        return {"pool": pool, "fc": fc, "modality": modality, "index": index}

    # ---------------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        o = self.optim_cfg
        groups = [
            {"params": list(self.net.backbone_parameters()), "lr": o.lr_backbone,
             "name": "backbone"},
            {"params": list(self.net.head_parameters()), "lr": o.lr_head, "name": "head"},
        ]
        opt = torch.optim.SGD(groups, lr=o.lr_head, momentum=o.momentum, nesterov=o.nesterov,
                              weight_decay=o.weight_decay)
        warm, milestones, gamma = o.warmup_epochs, tuple(o.milestones), o.gamma
        pre, pre_factor = self.pretrain_epochs, self.pretrain_lr_factor

        def factor(e: int) -> float:  # weak: a constant pre-training lr, then the main schedule
            return pre_factor if e < pre else lr_factor(e - pre, warm, milestones, gamma)

        sched = LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # --------------------------------------------------------------------- other hooks
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


def _require_callbacks(trainer: pl.Trainer, classes: list[type], how: str) -> None:
    """Stop before any work when the trainer lacks a callback the module's passes live in."""
    missing = [c.__name__ for c in classes
               if not any(isinstance(cb, c) for cb in trainer.callbacks)]
    if missing:
        raise InputError(
            f"the Trainer has no {', '.join(missing)} callback, which TSKDModule needs with "
            f"these settings; pass Trainer(callbacks=[..., {how}]) (tskd.runner.run.train and "
            "tskd.runner.run.evaluate_checkpoint do this)"
        )
