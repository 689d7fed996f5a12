"""The training system under weak supervision (pre-training stage and its lr) and with DART's
robust triplet switched on (no Trainer run)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import configs

from tskd.config import LossConfig, OptimConfig
from tskd.losses import RobustTriplet
from tskd.models.tskd_module import TSKDModule

LOSS = {"sm_w": 1.0, "md_w": 0.05, "md_start": 2, "margin": 0.3, "ce_only_epochs": 1,
        "soft_identity": True, "triplet_per_modality": False, "sm_metric": "l1",
        "sm_form": "code", "md_form": "code", "md_bandwidth": "offdiag",
        "prototype_pass": True, "prototype_norm": "count", "gmm_pass": "train",
        "gmm": {"max_iter": 100, "tol": 1e-2, "reg_covar": 5e-4}}
OPTIM = {"lr_head": 0.1, "lr_backbone": 0.01, "momentum": 0.9, "nesterov": True,
         "weight_decay": 5e-4, "warmup_epochs": 2, "milestones": [3], "gamma": 0.1}
P, K, IDS = 3, 2, 5


def module(epoch: int, **supervision) -> tuple[TSKDModule, dict]:
    torch.manual_seed(0)
    m = TSKDModule(num_classes=IDS, num_visible=12, num_infrared=10,
                   dataset=configs.dataset("sysu", root="x", img_h=32, img_w=16),
                   model=configs.model(backbone="resnet18", pretrained=False),
                   loss=LossConfig.of(LOSS, "loss"), optim=OptimConfig.of(OPTIM, "optim"),
                   supervision=configs.supervision(**{"name": "weak", "pretrain_epochs": 0,
                                                      "pretrain_lr_factor": 0.5,
                                                      "robust_triplet": False, **supervision}))
    logged: dict = {}
    m.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    m._trainer = SimpleNamespace(current_epoch=epoch, global_step=0, world_size=1)
    return m, logged


def batch():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(P).repeat_interleave(K)
    imgs = [torch.randn(P * K, 3, 32, 16, generator=g) for _ in range(3)]
    return (*imgs, labels, torch.arange(P * K), torch.arange(P * K) + 1)


def test_pretraining_is_cross_entropy_only_at_its_own_lr():
    m, logged = module(epoch=1, pretrain_epochs=2, pretrain_lr_factor=0.25)
    assert m.stage == "pretrain"
    m.training_step(batch(), 0)
    assert set(logged) == {"train/ce", "train/ce_epoch", "train/loss", "train/loss_epoch"}
    opt = m.configure_optimizers()
    o, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs += [g["lr"] for g in o.param_groups]  # backbone, head
        o.step()
        sched.step()
    # epochs 0-1: 0.25 x base; then the main schedule from its own epoch 0: warm-up 1/2, 2/2,
    # then x0.1 from its milestone 3 (epoch 5)
    assert lrs == pytest.approx([0.0025, 0.025, 0.0025, 0.025, 0.005, 0.05, 0.01, 0.1,
                                 0.01, 0.1, 0.001, 0.01])


def test_main_run_stages_count_from_the_end_of_pretraining():
    assert [module(e, pretrain_epochs=2)[0].stage for e in range(6)] == \
        ["pretrain", "pretrain", "warmup", "I", "II", "II"]


def test_robust_triplet_replaces_the_batch_hard_one():
    m, logged = module(epoch=1, robust_triplet=True)
    assert isinstance(m.triplet, RobustTriplet) and m.stage == "I"
    m.conf_view1[:3] = 0.2  # some unconfident visible rows: DART's cases come into play
    b = batch()
    torch.manual_seed(5)
    m.training_step(b, 0)
    # independently: the same forward (train-mode BN: batch statistics), the same draws
    f, logits = m.net.forward_train(torch.cat([b[0], b[1]]), b[2])
    w = torch.cat([m.conf_view1[b[4]], m.conf_view2[b[4]], m.conf_infrared[b[5]]])
    modality = torch.tensor([0] * (2 * P * K) + [1] * (P * K))
    torch.manual_seed(5)
    expected = RobustTriplet(margin=0.3)(f, b[3].repeat(3), modality, w, logits)
    assert float(logged["train/tri"]) == pytest.approx(float(expected), rel=1e-5)


# The and README's commands, exactly as typed (a sweep job composes like one run).
TYPED = [
    (["dataset=sysu", "supervision=noisy", "supervision.label_noise=0.2"], "noisy"),
    (["dataset=regdb", "dataset.trial=3", "supervision=weak", "supervision.label_ratio=0.1"],
     "weak"),
    (["experiment=synthetic", "supervision=noisy", "supervision.label_noise=0.5", "loss=tskd"],
     "noisy"),
    (["experiment=synthetic", "supervision=weak", "supervision.label_ratio=0.25",
      "supervision.pretrain_lr_factor=1", "loss=baseline"], "weak"),
]


@pytest.mark.parametrize(("overrides", "mode"), TYPED, ids=lambda o: " ".join(o)
                         if isinstance(o, list) else o)
def test_typed_supervision_commands_compose_and_validate(overrides, mode, tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from tskd.config import validate

    configs = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        # in-process composition has no Hydra run dir: the one thing a test must add
        cfg = compose(config_name="train",
                      overrides=[*overrides, f"paths.output_dir={tmp_path}"])
    typed = validate(cfg)
    assert typed.supervision.name == mode
    assert typed.supervision.pretrain_epochs == (31 if mode == "weak" else 0)
    assert typed.supervision.label_split == "per_identity"
