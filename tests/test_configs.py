"""Every config group option composes, and the keys used from outside exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

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


def test_paper_recipe_values():
    cfg = _compose("train", ["experiment=sysu"])
    assert cfg.model.backbone == "resnet50" and cfg.model.pretrained is True
    assert cfg.trainer.max_epochs == 80 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.loss.sm_w == 1.0 and cfg.loss.md_w == 0.05 and cfg.loss.md_start == 10
    assert cfg.optim.lr_head == 0.1 and cfg.optim.lr_backbone == 0.01
    assert list(cfg.optim.milestones) == [20, 40] and cfg.optim.warmup_epochs == 10


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
    for option in ("cpu", "gpu", "ddp"):
        cfg = _compose("train", [f"trainer={option}"])
        keys = set(cfg.trainer) - {"channels_last"}
        assert keys <= accepted, keys - accepted
