"""Config values are validated at the start of train() (tskd.config.validate), before data work.

Also the other start-of-run check: ImageNet weights that cannot be had stop the run at once.
"""

from __future__ import annotations

import logging
import urllib.error

import pytest
import torch
from helpers.hydra_compose import SMALL, compose_config
from omegaconf import OmegaConf, open_dict

from tskd.config import validate
from tskd.core.errors import CheckpointError, ConfigError
from tskd.models.components.pretrained import weights_file_name
from tskd.runner.run import train


def _config(tmp_path, *keys):
    """A synthetic-data train config whose data folder and run dir are under ``tmp_path``."""
    return compose_config("train", ["dataset=synthetic", *SMALL, *keys,
                                    f"paths.data_dir={tmp_path / 'data'}",
                                    f"paths.output_dir={tmp_path / 'run'}"])


def _nothing_done(tmp_path) -> bool:
    # no synthetic data generated, no cache, not even the run dir's run_info.json
    return not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value,want", [
    ("loss.md_w", "abc", "a number >= 0"),
    ("loss.sm_w", "-1", "a number >= 0"),
    ("loss.margin", "-0.3", "a number >= 0"),
    ("loss.md_start", "2.5", "a whole number >= 0"),
    ("loss.ce_only_epochs", "-1", "a whole number >= 0"),
    ("optim.lr_head", "-0.1", "a number > 0"),
    ("optim.lr_backbone", "0", "a number > 0"),
    ("optim.weight_decay", "-1e-4", "a number >= 0"),
    ("optim.milestones", "[40,20]", "a list of increasing whole epoch numbers"),
    ("data.num_ids", "0", "a whole number >= 1"),
    ("data.num_pos", "0", "a whole number >= 1"),
    ("data.num_workers", "many", "auto or a whole number >= 0"),
    ("data.erasing_p", "1.5", "a number >= 0 and <= 1"),
    ("dataset.img_h", "8", "a whole number >= 16"),
    ("dataset.img_w", "wide", "a whole number >= 16"),
    ("loss.md_form", "papr", "one of code|paper"),
    ("loss.md_bandwidth", "diag", "one of offdiag|all"),
    ("loss.sm_form", "sum", "one of code|mean"),
    ("loss.sm_metric", "l3", "one of l1|l2"),
    ("loss.prototype_norm", "mass", "one of count|weight"),
    ("loss.gmm_pass", "test", "one of train|eval"),
    ("data.gray_draw", "rgb", "one of caj|gated"),
    ("loss.soft_identity", "yes", "true or false"),
    ("data.channel_exchange", "1", "true or false"),
    ("model.backbone", "resnet101", "one of resnet18|resnet34|resnet50"),
    ("model.compile", "sometimes", "true or false"),
    ("trainer.max_epochs", "0", "a whole number >= 1"),
])
def test_invalid_value_refused_at_start(tmp_path, key, value, want):
    cfg = _config(tmp_path, f"{key}={value}")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    node = OmegaConf.select(cfg, key)
    shown = repr(OmegaConf.to_container(node) if OmegaConf.is_list(node) else node)
    assert f"{key}={shown} must be {want}" in str(err.value)
    assert f"(set {key}=<value>" in str(err.value)  # the fix
    assert _nothing_done(tmp_path)


def test_every_problem_in_one_message(tmp_path):
    cfg = _config(tmp_path, "loss.md_w=abc", "optim.lr_head=-0.1", "data.gray_draw=rgb")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert msg.startswith("invalid training config, nothing was run: ")
    assert "loss.md_w='abc'" in msg and "optim.lr_head=-0.1" in msg
    assert "data.gray_draw='rgb'" in msg


def test_dropped_key_fails_instead_of_a_default_in_code(tmp_path):
    cfg = _config(tmp_path)
    with open_dict(cfg):
        del cfg.data.pad
        del cfg.loss.md_w
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert "data.pad is missing from the config" in str(err.value)
    assert "loss.md_w is missing from the config" in str(err.value)
    assert _nothing_done(tmp_path)


def test_regdb_split_range_checked(tmp_path):
    cfg = _config(tmp_path, "dataset=regdb", "dataset.trial=11")
    with pytest.raises(ConfigError, match="dataset.trial=11 must be"):
        train(cfg)


def test_suspicious_values_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tskd.config")
    validate(_config(tmp_path, "loss.md_w=2", "data.num_ids=1"))
    text = caplog.text
    assert "loss.md_w=2 is above 1" in text and "data.num_ids=1" in text
    caplog.clear()
    validate(_config(tmp_path))
    assert caplog.text == ""  # the defaults are not suspicious


@pytest.mark.parametrize("keys", [
    [], ["experiment=synthetic"], ["experiment=sysu"], ["experiment=regdb", "dataset.trial=7"],
    ["loss=baseline"], ["loss=si"], ["loss=si_md"], ["loss=si_sm"], ["loss=sm_md"],
    ["dataset=synthetic_regdb"], ["mode=indoor"],
])
def test_shipped_configs_pass(tmp_path, keys):
    cfg = compose_config("train", [*keys, f"paths.output_dir={tmp_path}"])
    validate(cfg)


def test_offline_imagenet_weights_stop_train_before_any_data_work(tmp_path, monkeypatch):
    """model.pretrained=true, an empty hub cache, no network: stops naming the file and ways on."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    cfg = _config(tmp_path, "model.pretrained=true")
    with pytest.raises(CheckpointError) as err:
        train(cfg)
    msg = str(err.value)
    name = weights_file_name("resnet18")
    assert f"model.pretrained=/path/to/{name}" in msg and "model.pretrained=false" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert _nothing_done(tmp_path)
