"""The schema's rules: unknown keys, the trainer's keys, supervision's ranges, resume metadata,
and what adding a key takes (its YAML value and its field, nothing else)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tskd.checkpoints.resume import check_resume
from tskd.config import LossConfig, TrainConfig, validate
from tskd.core.checks import number
from tskd.core.errors import CheckpointError, ConfigError
from tskd.core.schema import MAY_DIFFER, MUST_MATCH, group, setting
from tskd.runner.trainer import build_trainer, device_settings
from tskd.supervision.modes import LABEL_SPLITS, SUPERVISION_MODES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compose(*overrides, configs: Path = CONFIGS, name: str = "train"):
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(name, overrides=[*overrides, "paths.output_dir=/unused"])


def _refused(*overrides) -> str:
    with pytest.raises(ConfigError) as err:
        validate(_compose(*overrides))
    return str(err.value)


@pytest.mark.parametrize("override,message", [
    ("+loss.md_weight=0.5", "loss.md_weight=0.5 is not a config key: did you mean loss.md_w? "
                            "(set loss.md_w=<value>, or drop loss.md_weight)"),
    ("+trainer.max_epoch=3", "trainer.max_epoch=3 is not a config key: did you mean "
                             "trainer.max_epochs?"),
    ("+data.md_w=0.1", "data.md_w=0.1 is not a config key: did you mean loss.md_w?"),
    ("+seeds=3", "seeds=3 is not a config key: did you mean seed?"),
    ("+loss.gmm.max_iters=5", "loss.gmm.max_iters=5 is not a config key: did you mean "
                              "loss.gmm.max_iter?"),
])
def test_an_unknown_key_is_refused_with_the_closest_known_one(override, message):
    assert message in _refused(override)


def test_an_unknown_key_far_from_every_known_one_lists_the_node_keys():
    msg = _refused("+supervision.zzz=1")
    assert "supervision.zzz=1 is not a config key: drop it; the keys of supervision are name, " \
           "label_noise," in msg


def test_a_lightning_argument_passes_through_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="tskd.config")
    cfg = _compose("trainer=cpu", "+trainer.accumulate_grad_batches=2")
    validate(cfg)
    assert "trainer.accumulate_grad_batches=2 is not in tskd's trainer schema: passed to " \
           "Lightning's Trainer as given, unchecked" in caplog.text
    settings = device_settings(OmegaConf.to_container(cfg.trainer, resolve=True))
    trainer = build_trainer(cfg, training=False, settings=settings)
    assert trainer.accumulate_grad_batches == 2


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "1.5", "abc"])
def test_limit_train_batches_that_trains_nothing_is_refused(value):
    msg = _refused(f"trainer.limit_train_batches={value}")
    shown = repr(OmegaConf.select(_compose(f"trainer.limit_train_batches={value}"),
                                  "trainer.limit_train_batches"))
    assert f"trainer.limit_train_batches={shown} must be a fraction of the epoch in (0, 1] or a " \
           "whole number of batches >= 1, since 0 trains nothing" in msg


@pytest.mark.parametrize("override,want", [
    ("trainer.accelerator=gpus", "one of auto|gpu|"),
    ("trainer.precision=bf17-mixed", "one of auto|64|32|16|"),
    ("trainer.devices=0", "auto, -1 (every device), a whole number >= 1 or a list"),
    ("trainer.strategy=dpp", "one of auto|ddp|"),
    ("trainer.deterministic=sometimes", "true or false or warn"),
])
def test_trainer_keys_are_checked_like_every_other_key(override, want):
    key = override.split("=")[0]
    assert f"{key}=" in _refused(override) and want in _refused(override)


@pytest.mark.parametrize("override,want", [
    ("supervision.name=semi", "one of " + "|".join(SUPERVISION_MODES)),
    ("supervision.label_split=random", "one of " + "|".join(LABEL_SPLITS)),
    ("supervision.label_noise=1", "a number >= 0 and < 1"),
    ("supervision.label_ratio=0", "a number > 0 and <= 1"),
    ("supervision.pretrain_epochs=-1", "a whole number >= 0"),
    ("supervision.pretrain_lr_factor=0", "a number > 0"),
    ("supervision.refresh_every=0", "a whole number >= 1"),
    ("supervision.noise_file=''", "a non-empty string or null"),
    ("supervision.plot_epochs=[-1]", "a list of whole epoch numbers >= 0"),
    ("supervision.robust_triplet=maybe", "true or false"),
])
def test_supervision_values_out_of_range_are_refused(override, want):
    key = override.split("=")[0]
    msg = _refused(override)
    assert f"{key}=" in msg and f"must be {want}" in msg


def test_supervision_edges_pass():
    c = validate(_compose("supervision=weak", "supervision.label_ratio=1",
                          "supervision.label_noise=0", "supervision.plot_epochs=[5,0]"))
    assert (c.supervision.name, c.supervision.label_ratio, c.supervision.plot_epochs) == (
        "weak", 1, (5, 0))


# ------------------------------------------------------------------ resume rules as metadata
@dataclass(kw_only=True)
class ToyLoss(LossConfig):
    toy_w: float = setting(number(0), resume=MUST_MATCH)
    toy_log: float = setting(number(0), resume=MAY_DIFFER)


@dataclass(kw_only=True)
class ToyTrain(TrainConfig):
    loss: ToyLoss = group()


def _recorded(cfg) -> dict:
    return {"hyper_parameters": {"config": OmegaConf.to_container(cfg, resolve=True)}}


def test_a_new_must_match_field_is_enforced_without_editing_the_resume_code():
    then = _compose("+loss.toy_w=1.0", "+loss.toy_log=1.0")
    now = _compose("+loss.toy_w=2.0", "+loss.toy_log=3.0")
    with pytest.raises(CheckpointError) as err:
        check_resume(now, _recorded(then), "old.ckpt", schema=ToyTrain)
    msg = str(err.value)
    assert "loss.toy_w=2.0 but the checkpoint was trained with loss.toy_w=1.0" in msg
    assert "toy_log" not in msg  # may differ
    check_resume(now, _recorded(then), "old.ckpt")  # TrainConfig has no toy_w: not compared


def test_supervision_must_match_on_resume_except_plot_epochs():
    then = _compose("supervision=noisy")
    msg = ""
    with pytest.raises(CheckpointError) as err:
        check_resume(_compose("supervision=noisy", "supervision.label_noise=0.5",
                              "supervision.noise_seed=3"), _recorded(then), "old.ckpt")
    msg = str(err.value)
    assert "supervision.label_noise=0.5 but the checkpoint was trained with " \
           "supervision.label_noise=0.2" in msg and "supervision.noise_seed=3 but" in msg
    check_resume(_compose("supervision=noisy", "supervision.plot_epochs=[4]"), _recorded(then),
                 "old.ckpt")


# ---------------------------------------------------------------- adding a key: two places
def test_adding_a_key_takes_its_yaml_value_and_its_field(tmp_path):
    """loss.toy_w: the YAML line and the ToyLoss field; with only one of them it is refused."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    with open(configs / "loss" / "tskd.yaml", "a") as f:
        f.write("toy_w: 0.5          # a toy weight (this test only)\ntoy_log: 0.0\n")
    both = validate(_compose(configs=configs), ToyTrain)
    assert (both.loss.toy_w, both.loss.toy_log) == (0.5, 0.0)
    with pytest.raises(ConfigError, match=r"loss.toy_w=0.5 is not a config key"):
        validate(_compose(configs=configs), TrainConfig)  # the YAML value without the field
    with pytest.raises(ConfigError, match=r"loss.toy_w is missing from the config"):
        validate(_compose(), ToyTrain)  # the field without the YAML value
    with pytest.raises(ConfigError, match=r"loss.toy_w=-1 must be a number >= 0"):
        validate(_compose("loss.toy_w=-1", configs=configs), ToyTrain)
