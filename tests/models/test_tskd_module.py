"""The LightningModule's staged losses, schedule, GMM and prototype updates (no Trainer run)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from helpers import configs
from helpers import loss_references as ref
from torch.utils.data import DataLoader, TensorDataset

from tskd.config import LossConfig, OptimConfig
from tskd.core.errors import InputError, NonFiniteLossError
from tskd.losses import gmm_confidence, per_sample_ce, visible_view_confidences
from tskd.models.epoch_passes import ConfidencePass, PrototypePass
from tskd.models.tskd_module import TSKDModule  # noqa: E402

# the defaults of configs/loss/tskd.yaml (the authors' code) and the first release's switches
LOSS = {"sm_w": 1.0, "md_w": 0.05, "md_start": 2, "margin": 0.3, "ce_only_epochs": 1,
        "soft_identity": True, "triplet_per_modality": False, "sm_metric": "l1",
        "sm_form": "code", "md_form": "code", "md_bandwidth": "offdiag",
        "prototype_pass": True, "prototype_norm": "count", "gmm_pass": "train",
        "gmm": {"max_iter": 100, "tol": 1e-2, "reg_covar": 5e-4}}
FIRST_RELEASE = {"sm_form": "mean", "md_form": "paper", "md_bandwidth": "all",
                 "prototype_pass": False, "prototype_norm": "weight", "gmm_pass": "eval",
                 "gmm": {"max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}}
OPTIM = {"lr_head": 0.1, "lr_backbone": 0.01, "momentum": 0.9, "nesterov": True,
         "weight_decay": 5e-4, "warmup_epochs": 10, "milestones": [20, 40], "gamma": 0.1}
P, K, IDS = 3, 2, 5
N_VIS, N_IR = 12, 10


def _images(n: int, seed: int, h: int = 32, w: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


class FakeDataModule:
    """Serves the three pass loaders of ReIDDataModule from fixed random tensors."""

    def __init__(self) -> None:
        self.vis, self.ir = _images(N_VIS, 0), _images(N_IR, 1)
        self.vis_y, self.ir_y = torch.arange(N_VIS) % IDS, torch.arange(N_IR) % IDS
        self.prototype_calls: list = []

    def confidence_dataloader(self, modality: int) -> DataLoader:
        x, y = (self.vis, self.vis_y) if modality == 0 else (self.ir, self.ir_y)
        return DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=7)

    def augmented_confidence_dataloader(self, epoch: int) -> list:
        """Two batches covering every image: views are the images plus a view-specific shift."""
        out = []
        for vis_rows, ir_rows in ((torch.arange(0, 6), torch.arange(0, 5)),
                                  (torch.arange(6, 12), torch.arange(5, 10))):
            v = self.vis[vis_rows]
            out.append((v, v.flip(3), self.ir[ir_rows], self.vis_y[vis_rows],
                        self.ir_y[ir_rows], vis_rows, ir_rows))
        return out

    def prototype_dataloader(self, epoch: int, num_batches: int) -> list:
        self.prototype_calls.append((epoch, num_batches))
        return [batch(seed=10 + b) for b in range(num_batches)]


def make_module(epoch: int = 0, **loss) -> tuple[TSKDModule, list]:
    torch.manual_seed(0)
    m = TSKDModule(
        num_classes=IDS, num_visible=N_VIS, num_infrared=N_IR,
        dataset=configs.dataset("sysu", root="x", img_h=32, img_w=16),
        model=configs.model(backbone="resnet18", pretrained=False),
        loss=LossConfig.of({**LOSS, **loss}, "loss"), optim=OptimConfig.of(OPTIM, "optim"),
        eval=configs.eval_options(),
    )
    logged: list = []
    m.log = lambda name, value, **kw: logged.append((name, float(torch.as_tensor(value).detach())))
    m._trainer = SimpleNamespace(current_epoch=epoch, global_step=7, world_size=1,
                                 num_training_batches=2, datamodule=FakeDataModule(),
                                 precision_plugin=SimpleNamespace(
                                     forward_context=contextlib.nullcontext))
    return m, logged


def start_epoch(m: TSKDModule) -> None:
    """What the Trainer calls at an epoch's start: the confidence pass, then the module."""
    ConfidencePass(m.trainer.datamodule).on_train_epoch_start(m.trainer, m)
    m.on_train_epoch_start()


def end_epoch(m: TSKDModule) -> None:
    """What the Trainer calls at an epoch's end: the prototype pass, then the module."""
    PrototypePass(m.trainer.datamodule).on_train_epoch_end(m.trainer, m)
    m.on_train_epoch_end()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(P).repeat_interleave(K)
    imgs = [torch.randn(P * K, 3, 32, 16, generator=g) for _ in range(3)]
    return (*imgs, labels, torch.arange(P * K), torch.arange(P * K) + 1)


def terms(logged) -> dict:
    return dict(logged)


def test_warmup_is_cross_entropy_only():
    m, logged = make_module(epoch=0)
    b = batch()
    loss = m.training_step(b, 0)
    names = {n for n, _ in logged}
    assert {"train/ce", "train/loss"} <= names and not names & {"train/tri", "train/sm",
                                                                  "train/md"}
    # equals the plain mean CE of the three views (same batch, same BN batch statistics)
    f, logits = m.net.forward_train(torch.cat([b[0], b[1]]), b[2])
    expected = per_sample_ce(logits, b[3].repeat(3)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not bool(m.bank.count.any())  # no prototypes accumulated in warm-up


def test_stage_one_terms_and_the_prototype_pass():
    m, logged = make_module(epoch=1)
    loss = m.training_step(batch(), 0)
    t = terms(logged)
    assert {"train/ce", "train/tri", "train/sm"} <= set(t) and "train/md" not in t
    assert t["train/sm"] == 0.0  # no prototypes yet: no pull towards zero vectors
    assert loss.item() == pytest.approx(t["train/ce"] + t["train/tri"], rel=1e-5)
    assert not bool(m.bank.count.any())  # the faithful default sums in a separate pass
    m.conf_view1.uniform_(0.2, 1.0)
    m.conf_view2.uniform_(0.0, 0.5)
    end_epoch(m)
    assert m.trainer.datamodule.prototype_calls == [(1, 2)]  # this epoch, batches trained
    # reference: the same two batches through the network in train mode, Eq. 8-9 by hand
    feats = []
    with torch.no_grad():
        for b in (batch(seed=10), batch(seed=11)):
            f, _ = m.net.forward_train(torch.cat([b[0], b[1]]), b[2])
            w = torch.cat([m.conf_view1[b[4]], m.conf_view2[b[4]], m.conf_infrared[b[5]]])
            feats.append((f.double(), b[3], w.double()))
    protos, seen = ref.prototypes(feats, IDS, m.net.feat_dim, norm="count")
    assert torch.equal(m.bank.valid, seen) and bool(seen[:P].all()) and not seen[P:].any()
    torch.testing.assert_close(m.bank.prototypes.double(), protos, rtol=1e-5, atol=1e-6)
    logged.clear()
    m.training_step(batch(seed=2), 1)
    assert terms(logged)["train/sm"] > 0


def test_first_release_accumulates_prototypes_from_the_training_forward():
    m, _ = make_module(epoch=1, **FIRST_RELEASE)
    m.training_step(batch(), 0)
    assert bool((m.bank.weight_sum[:P] > 0).all()) and not bool(m.bank.weight_sum[P:].any())
    end_epoch(m)
    assert m.trainer.datamodule.prototype_calls == []  # no second pass
    assert bool(m.bank.valid[:P].all()) and not bool(m.bank.valid[P:].any())


@pytest.mark.parametrize("switches", [{}, FIRST_RELEASE], ids=["code", "first-release"])
def test_training_step_terms_equal_independent_formulas(switches):
    """Every logged term and the total, recomputed from forward_train's features."""
    cfg = {**LOSS, **switches}
    m, logged = make_module(epoch=2, **switches)  # stage II: every term on
    g = torch.Generator().manual_seed(3)
    m.conf_view1.copy_(torch.rand(N_VIS, generator=g))  # three different confidence vectors
    m.conf_view2.copy_(torch.rand(N_VIS, generator=g))
    m.conf_infrared.copy_(torch.rand(N_IR, generator=g))
    m.bank.prototypes.normal_(generator=g)
    m.bank.valid.copy_(torch.rand(IDS, 3, generator=g) < 0.7)
    m.bank.valid[0] = True
    b = batch()
    total = m.training_step(b, 0)
    t = terms(logged)
    vis1, vis2, ir, labels, vis_idx, ir_idx = b
    f, logits = m.net.forward_train(torch.cat([vis1, vis2]), ir)  # same batch: same BN stats
    n = labels.shape[0]
    w = torch.cat([m.conf_view1[vis_idx], m.conf_view2[vis_idx], m.conf_infrared[ir_idx]])
    y3 = labels.repeat(3)
    expected = {
        "ce": ref.si(logits, y3, w),
        "tri": ref.triplet(f, y3, cfg["margin"]),
        "sm": ref.sm(f, labels, w, m.bank.prototypes, m.bank.valid, cfg["sm_metric"],
                     cfg["sm_form"]),
        "md": ref.md(f[:n], f[n:2 * n], f[2 * n:], labels, cfg["md_form"],
                     offdiag=cfg["md_bandwidth"] == "offdiag"),
    }
    for name, value in expected.items():
        assert t[f"train/{name}"] == pytest.approx(float(value.detach()), rel=1e-4, abs=1e-6), name
    ref_total = (expected["ce"] + expected["tri"] + cfg["sm_w"] * expected["sm"]
                 + cfg["md_w"] * expected["md"])
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-5)
    assert t["train/loss"] == pytest.approx(ref_total.item(), rel=1e-5)
    params = [m.net.head.classifier.weight, next(m.net.backbone.visible_stem.parameters())]
    grads = torch.autograd.grad(total, params)
    ref_grads = torch.autograd.grad(ref_total, params)
    for got, want in zip(grads, ref_grads):
        # float32 through the whole network: agreement to round-off, not to the last bit
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_confidence_weights_enter_the_identity_loss():
    m, logged = make_module(epoch=1)
    for buf in m.confidences:
        buf.fill_(0.5)
    m.training_step(batch(), 0)
    half = terms(logged)["train/ce"]
    m2, logged2 = make_module(epoch=1)
    m2.training_step(batch(), 0)
    assert half == pytest.approx(0.5 * terms(logged2)["train/ce"], rel=1e-5)


def test_confidence_pass_gives_one_confidence_per_view_in_train_mode():
    m, logged = make_module(epoch=1)
    m.train()
    before = m.net.backbone.layer1[0].bn1.running_mean.clone()
    start_epoch(m)
    # train mode as the authors' code: batch statistics, and the running ones move
    assert not torch.equal(before, m.net.backbone.layer1[0].bn1.running_mean)
    assert m.net.training
    # reference: per-sample CE of each view computed here, batch by batch in train mode; the
    # GMM functions themselves are checked against scikit-learn in tests/losses

    m2, _ = make_module(epoch=1)
    ce = {0: torch.zeros(N_VIS), 1: torch.zeros(N_VIS), 2: torch.zeros(N_IR)}
    with torch.no_grad():
        for v1, v2, ir, vy, iy, vr, irr in m2.trainer.datamodule.augmented_confidence_dataloader(1):
            _, logits = m2.net.train().forward_train(torch.cat([v1, v2]), ir)
            full = torch.nn.functional.cross_entropy(logits, torch.cat([vy, vy, iy]),
                                                     reduction="none")
            bv = len(vr)
            ce[0][vr], ce[1][vr], ce[2][irr] = full[:bv], full[bv:2 * bv], full[2 * bv:]
    w1, w2 = visible_view_confidences(ce[0], ce[1])
    torch.testing.assert_close(m.conf_view1, w1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.conf_view2, w2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.conf_infrared, gmm_confidence(ce[2]), rtol=1e-4, atol=1e-5)
    assert not torch.equal(m.conf_view1, m.conf_view2)
    assert {"train/confidence_view1", "train/confidence_view2",
            "train/confidence_infrared"} <= set(terms(logged))


def test_eval_mode_confidence_pass_shares_one_confidence_and_keeps_batchnorm():
    m, _ = make_module(epoch=1, gmm_pass="eval")
    m.train()
    before = m.net.backbone.layer1[0].bn1.running_mean.clone()
    start_epoch(m)
    assert torch.equal(before, m.net.backbone.layer1[0].bn1.running_mean)
    assert m.net.training  # mode restored
    assert torch.equal(m.conf_view1, m.conf_view2)
    for buf in m.confidences:
        assert ((buf >= 0) & (buf <= 1)).all() and not torch.all(buf == 1)


def test_no_gmm_in_warmup_or_when_switched_off():
    m, _ = make_module(epoch=0)
    start_epoch(m)
    assert all(torch.all(buf == 1) for buf in m.confidences)
    m, _ = make_module(epoch=3, soft_identity=False)
    start_epoch(m)
    assert all(torch.all(buf == 1) for buf in m.confidences)


def test_unknown_gmm_pass_is_refused():
    with pytest.raises(ValueError, match="loss.gmm_pass='train-mode'"):
        make_module(gmm_pass="train-mode")


def test_non_finite_loss_names_step_batch_and_terms():
    m, _ = make_module(epoch=1)
    b = list(batch())
    b[2] = torch.full_like(b[2], float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, global step 7, batch 4.*'ce'.*"
                                                 r"identities \[0, 1, 2\].*infrared rows"):
        m.training_step(tuple(b), 4)


def test_optimiser_groups_and_lr_per_epoch():
    m, _ = make_module()
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert [g["name"] for g in opt.param_groups] == ["backbone", "head"]
    head_ids = {id(p) for p in m.net.head_parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head_ids
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["weight_decay"] == 5e-4
    seen = []
    for _ in range(45):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.001, 0.01])
    assert seen[9] == pytest.approx([0.01, 0.1]) and seen[19] == pytest.approx([0.01, 0.1])
    assert seen[20] == pytest.approx([0.001, 0.01]) and seen[40] == pytest.approx([1e-4, 1e-3])


def test_checkpoint_metadata_is_plain():
    m, _ = make_module()
    ckpt: dict = {}
    m.on_save_checkpoint(ckpt)
    assert ckpt["tskd"] == {"format": 2, "dataset": "sysu", "trial": None, "num_classes": IDS,
                            "img_size": [32, 16], "backbone": "resnet18"}


def test_training_without_the_pass_callbacks_is_refused_naming_them():
    """A hand-built Trainer that lacks a pass would train with stale confidences/prototypes."""
    m, _ = make_module(epoch=0)
    m._trainer.callbacks = [ConfidencePass(FakeDataModule())]
    with pytest.raises(InputError, match=r"no PrototypePass callback.*epoch_pass_callbacks"):
        m.on_fit_start()
    m._trainer.callbacks = []
    with pytest.raises(InputError, match=r"no ConfidencePass, PrototypePass callback"):
        m.on_fit_start()
    with pytest.raises(InputError, match=r"no ProtocolEvaluation callback"):
        m.on_test_start()
    m._trainer.callbacks = [ConfidencePass(FakeDataModule()), PrototypePass(FakeDataModule())]
    m.on_fit_start()  # complete: no error
    # settings that read neither confidences nor prototypes need neither pass
    m2, _ = make_module(epoch=0, soft_identity=False, sm_w=0.0)
    m2._trainer.callbacks = []
    m2.on_fit_start()
