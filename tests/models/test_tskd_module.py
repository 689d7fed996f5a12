"""The LightningModule's staged losses, schedule, GMM and prototype updates (no Trainer run)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tskd.errors import NonFiniteLossError
from tskd.losses import per_sample_ce
from tskd.models.tskd_module import TSKDModule

LOSS = {"sm_w": 1.0, "md_w": 0.05, "md_start": 2, "margin": 0.3, "ce_only_epochs": 1,
        "soft_identity": True, "triplet_per_modality": False, "sm_metric": "l1",
        "gmm": {"max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}}
OPTIM = {"lr_head": 0.1, "lr_backbone": 0.01, "momentum": 0.9, "nesterov": True,
         "weight_decay": 5e-4, "warmup_epochs": 10, "milestones": [20, 40], "gamma": 0.1}
P, K, IDS = 3, 2, 5


class FakeDataModule:
    """Serves (image, label, row) batches of fixed random images, like confidence_dataloader."""

    def __init__(self, n_vis: int, n_ir: int, h: int = 32, w: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.sets = {
            m: TensorDataset(torch.randn(n, 3, h, w, generator=g),
                             torch.arange(n) % IDS, torch.arange(n))
            for m, n in ((0, n_vis), (1, n_ir))
        }

    def confidence_dataloader(self, modality: int) -> DataLoader:
        return DataLoader(self.sets[modality], batch_size=7)


def make_module(epoch: int = 0, **loss) -> tuple[TSKDModule, list]:
    torch.manual_seed(0)
    m = TSKDModule(
        num_classes=IDS, num_visible=12, num_infrared=10,
        dataset={"name": "sysu", "root": "x", "trial": None, "img_h": 32, "img_w": 16},
        model={"backbone": "resnet18", "pretrained": False},
        loss={**LOSS, **loss}, optim=OPTIM, eval={"flip": False, "rerank": False},
    )
    logged: list = []
    m.log = lambda name, value, **kw: logged.append((name, float(torch.as_tensor(value).detach())))
    m._trainer = SimpleNamespace(current_epoch=epoch, global_step=7, world_size=1,
                                 datamodule=FakeDataModule(12, 10),
                                 precision_plugin=SimpleNamespace(
                                     forward_context=contextlib.nullcontext))
    return m, logged


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
    assert not bool(m.bank.weight_sum.any())  # no prototypes accumulated in warm-up


def test_stage_one_terms_and_prototype_accumulation():
    m, logged = make_module(epoch=1)
    loss = m.training_step(batch(), 0)
    t = terms(logged)
    assert {"train/ce", "train/tri", "train/sm"} <= set(t) and "train/md" not in t
    assert t["train/sm"] == 0.0  # no prototypes yet: no pull towards zero vectors
    assert loss.item() == pytest.approx(t["train/ce"] + t["train/tri"], rel=1e-5)
    assert bool((m.bank.weight_sum[:P] > 0).all()) and not bool(m.bank.weight_sum[P:].any())
    m.on_train_epoch_end()
    assert bool(m.bank.valid[:P].all()) and not bool(m.bank.valid[P:].any())
    logged.clear()
    m.training_step(batch(seed=2), 1)
    assert terms(logged)["train/sm"] > 0


def test_stage_two_adds_weighted_md():
    m, logged = make_module(epoch=2)
    loss = m.training_step(batch(), 0)
    t = terms(logged)
    assert t["train/md"] > 0
    total = t["train/ce"] + t["train/tri"] + 1.0 * t["train/sm"] + 0.05 * t["train/md"]
    assert loss.item() == pytest.approx(total, rel=1e-5)


def test_confidence_weights_enter_the_identity_loss():
    m, logged = make_module(epoch=1)
    m.conf_visible.fill_(0.5)
    m.conf_infrared.fill_(0.5)
    m.training_step(batch(), 0)
    half = terms(logged)["train/ce"]
    m2, logged2 = make_module(epoch=1)
    m2.training_step(batch(), 0)
    assert half == pytest.approx(0.5 * terms(logged2)["train/ce"], rel=1e-5)


def test_gmm_pass_updates_confidences_without_touching_batchnorm():
    m, _ = make_module(epoch=1)
    m.train()
    before = m.net.backbone.layer1[0].bn1.running_mean.clone()
    m.on_train_epoch_start()
    assert torch.equal(before, m.net.backbone.layer1[0].bn1.running_mean)
    assert m.net.training  # mode restored
    for buf in (m.conf_visible, m.conf_infrared):
        assert ((buf >= 0) & (buf <= 1)).all() and not torch.all(buf == 1)


def test_no_gmm_in_warmup_or_when_switched_off():
    m, _ = make_module(epoch=0)
    m.on_train_epoch_start()
    assert torch.all(m.conf_visible == 1)
    m, _ = make_module(epoch=3, soft_identity=False)
    m.on_train_epoch_start()
    assert torch.all(m.conf_infrared == 1)


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
    assert ckpt["tskd"] == {"format": 1, "dataset": "sysu", "trial": None, "num_classes": IDS,
                            "img_size": [32, 16], "backbone": "resnet18"}
