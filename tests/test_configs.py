"""Every config group option composes, and the keys used from outside exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tskd.runner.trainer import device_settings

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("overrides", [
    [],
    ["dataset=sysu"],
    ["dataset=regdb", "dataset.trial=3", "loss.md_w=0.05"],
    ["dataset=synthetic_regdb"],
    ["experiment=synthetic"],
    ["experiment=sysu"],
    ["experiment=regdb", "dataset.trial=7"],
    ["mode=indoor", "dataset=sysu"],
    ["trainer=gpu"],
    ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
    ["logger=tensorboard"],
    ["logger=none"],
    ["loss=baseline"],
])
def test_train_config_composes(overrides):
    cfg = OmegaConf.to_container(_compose("train", overrides), resolve=False)
    for key in ("dataset.root", "dataset.trial", "dataset.img_h", "dataset.img_w", "mode.name",
                "ckpt", "seed", "trainer.max_epochs", "model.backbone", "model.pretrained",
                "data.num_ids", "data.num_pos", "loss.sm_w", "loss.md_w", "loss.md_start",
                "loss.margin", "dataset.cache_dir", "paths.data_dir"):
        node = cfg
        for part in key.split("."):
            assert part in node, f"{key} missing for overrides {overrides}"
            node = node[part]


def test_outside_keys_override_exactly():
    cfg = _compose("train", [
        "dataset=sysu", "dataset.root=/somewhere/SYSU", "model.backbone=resnet18",
        "model.pretrained=false", "dataset.img_h=128", "dataset.img_w=64", "trainer=cpu",
        "trainer.max_epochs=3", "data.num_ids=4", "data.num_pos=2", "seed=5",
    ])
    assert cfg.dataset.name == "sysu" and cfg.dataset.root == "/somewhere/SYSU"
    assert (cfg.dataset.img_h, cfg.dataset.img_w) == (128, 64)
    assert cfg.model.backbone == "resnet18" and cfg.model.pretrained is False
    assert cfg.trainer.max_epochs == 3 and cfg.trainer.accelerator == "cpu"
    assert (cfg.data.num_ids, cfg.data.num_pos, cfg.seed) == (4, 2, 5)


def _resolved(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


# The design card's training commands, as a user types them (a sweep job composes like one run)
DESIGN_CARD = [
    ["dataset=regdb", "loss.md_w=0.05"],
    ["dataset=regdb", "dataset.trial=3", "loss.md_w=0.05"],
    ["dataset=regdb", "dataset.trial=7"],  # one job of: -m dataset=regdb dataset.trial=1,...,10
    ["dataset=sysu"],
    ["dataset=sysu", "dataset.root=/data/SYSU-MM01"],
]


@pytest.mark.parametrize("overrides", DESIGN_CARD, ids=" ".join)
def test_design_card_commands_resolve_the_paper_recipe(overrides):
    cfg = _compose("train", overrides)
    assert cfg.model.backbone == "resnet50" and cfg.model.pretrained is True
    assert (cfg.dataset.img_h, cfg.dataset.img_w) == (288, 144)
    assert (cfg.data.num_ids, cfg.data.num_pos) == (8, 4)  # P x K per device
    assert cfg.data.pad == 10 and cfg.data.gray_draw == "caj"
    assert cfg.trainer.max_epochs == 80
    assert cfg.optim.lr_head == 0.1 and cfg.optim.lr_backbone == 0.01
    assert cfg.optim.warmup_epochs == 10 and list(cfg.optim.milestones) == [20, 40]
    assert cfg.loss.sm_w == 1.0 and cfg.loss.md_w == 0.05 and cfg.loss.md_start == 10
    assert cfg.loss.md_form == "code" and cfg.loss.gmm_pass == "train"
    assert cfg.trainer.accelerator == "auto"


@pytest.mark.parametrize("overrides", DESIGN_CARD[:1] + DESIGN_CARD[3:4], ids=" ".join)
def test_device_follows_the_machine(overrides):
    trainer = _resolved(_compose("train", overrides).trainer)
    gpu = device_settings(trainer, cuda_devices=2)
    assert (gpu["accelerator"], gpu["devices"], gpu["precision"], gpu["channels_last"]) == (
        "gpu", 1, "bf16-mixed", True)
    cpu = device_settings(trainer, cuda_devices=0)
    assert (cpu["accelerator"], cpu["devices"], cpu["precision"], cpu["channels_last"]) == (
        "cpu", 1, "32-true", False)


def test_forced_trainer_and_explicit_keys_win_over_auto():
    cpu = device_settings(_resolved(_compose("train", ["trainer=cpu"]).trainer), cuda_devices=1)
    assert (cpu["accelerator"], cpu["precision"], cpu["channels_last"]) == ("cpu", "32-true",
                                                                            False)
    gpu = device_settings(_resolved(_compose("train", ["trainer=gpu"]).trainer), cuda_devices=1)
    assert (gpu["accelerator"], gpu["precision"], gpu["channels_last"]) == ("gpu", "bf16-mixed",
                                                                            True)
    fp32 = device_settings(_resolved(_compose("train", ["trainer.precision=32-true"]).trainer),
                           cuda_devices=1)
    assert (fp32["accelerator"], fp32["precision"]) == ("gpu", "32-true")


def test_demo_sets_its_small_recipe_explicitly():
    cfg = _compose("train", ["experiment=synthetic"])
    assert cfg.model.backbone == "resnet18" and cfg.model.pretrained is False
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 14
    assert (cfg.dataset.img_h, cfg.dataset.img_w, cfg.data.pad) == (64, 32, 2)


def test_paper_batch_experiments():
    """experiment=sysu|regdb: the recipe with the paper's P = 6 (the default P is 8)."""
    for name in ("sysu", "regdb"):
        cfg = _compose("train", [f"experiment={name}"])
        assert cfg.dataset.name == name and (cfg.data.num_ids, cfg.data.num_pos) == (6, 4)
        assert cfg.model.pretrained is True and cfg.trainer.accelerator == "auto"


@pytest.mark.parametrize("row", ["baseline", "si", "si_sm", "si_md", "sm_md", "tskd"])
def test_table4_rows(row):
    """python train.py -m experiment=synthetic loss=baseline,si,si_sm,si_md,sm_md,tskd"""
    loss = _compose("train", ["experiment=synthetic", f"loss={row}"]).loss
    si, sm, md = row in ("si", "si_sm", "si_md", "tskd"), row in ("si_sm", "sm_md", "tskd"), \
        row in ("si_md", "sm_md", "tskd")
    assert loss.soft_identity is si
    assert loss.sm_w == (1.0 if sm else 0.0) and loss.md_w == (0.05 if md else 0.0)
    assert loss.md_start == 8  # the demo's schedule survives the group choice


def test_eval_config_requires_ckpt():
    cfg = _compose("eval", ["dataset=sysu", "mode=indoor"])
    assert OmegaConf.is_missing(cfg, "ckpt")
    assert cfg.mode.name == "indoor"
    cfg = _compose("eval", ["ckpt=x.ckpt", "dataset=regdb", "dataset.trial=4"])
    assert cfg.ckpt == "x.ckpt" and cfg.dataset.trial == 4


def test_trainer_configs_are_lightning_arguments():
    """Everything in trainer/* except channels_last must be a Trainer argument."""
    import inspect

    import pytorch_lightning as pl

    accepted = set(inspect.signature(pl.Trainer.__init__).parameters)
    for option in ("auto", "cpu", "gpu", "ddp"):
        cfg = _compose("train", [f"trainer={option}"])
        keys = set(cfg.trainer) - {"channels_last"}
        assert keys <= accepted, keys - accepted
