"""Resuming (``train.py ... ckpt=last.ckpt``) is refused under other settings, before data work.

tskd.runner.run.train runs in-process on configs composed by Hydra; the checkpoints are written as
train.py writes them (tests/helpers/run_checkpoints.py). Every refusal must come before
a cache is built, so each test also checks that the dataset folder gained no ``tskd_cache``.
"""

from __future__ import annotations

import pytest
import torch
from helpers.hydra_compose import SMALL, compose_config
from helpers.run_checkpoints import write_checkpoint
from helpers.synthetic_trees import regdb_tree, sysu_tree

from tskd.checkpoints.loading import load_checkpoint
from tskd.checkpoints.resume import check_resume
from tskd.core.errors import CheckpointError
from tskd.runner.run import train


@pytest.fixture(scope="module")
def sysu_run(tmp_path_factory):
    """(checkpoint, the keys it was trained with, data root)."""
    base = tmp_path_factory.mktemp("resume")
    root = sysu_tree(base / "SYSU")
    keys = ["dataset=sysu", f"dataset.root={root}", "trainer=cpu", *SMALL]
    return write_checkpoint(base / "last.ckpt", keys), keys, root


def _resume(ckpt, keys, tmp_path, *changed):
    cfg = compose_config("train", [*keys, *changed, f"ckpt={ckpt}",
                                   f"paths.output_dir={tmp_path / 'run'}"])
    return train(cfg)


@pytest.mark.parametrize("changed,message", [
    ("dataset.img_h=96", "dataset.img_h=96 but the checkpoint was trained with dataset.img_h=64"),
    ("model.backbone=resnet34",
     "model.backbone='resnet34' but the checkpoint was trained with model.backbone='resnet18'"),
    ("optim.lr_head=0.05", "optim.lr_head=0.05 but the checkpoint was trained with "
                           "optim.lr_head=0.1"),
    ("loss.md_w=0.1", "loss.md_w=0.1 but the checkpoint was trained with loss.md_w=0.05"),
    ("seed=3", "seed=3 but the checkpoint was trained with seed=0"),
    ("data.num_ids=6", "data.num_ids=6 but the checkpoint was trained with data.num_ids=8"),
])
def test_changed_setting_refused_before_data_work(sysu_run, tmp_path, changed, message):
    ckpt, keys, root = sysu_run
    with pytest.raises(CheckpointError) as err:
        _resume(ckpt, keys, tmp_path, changed)
    msg = str(err.value)
    assert f"cannot resume from {ckpt}" in msg and message in msg
    assert "Resume with the checkpoint's settings" in msg and "new run without ckpt=" in msg
    assert not (root / "tskd_cache").exists() and not (tmp_path / "run").exists()


def test_another_dataset_refused(sysu_run, tmp_path):
    ckpt, keys, _ = sysu_run
    with pytest.raises(CheckpointError, match="dataset.name='regdb' but the checkpoint was "
                                              "trained with dataset.name='sysu'"):
        _resume(ckpt, [*keys, "dataset=synthetic_regdb", f"paths.data_dir={tmp_path / 'd'}"],
                tmp_path)
    assert not (tmp_path / "d").exists()  # the synthetic RegDB tree was never generated


def test_several_changes_listed_together(sysu_run, tmp_path):
    ckpt, keys, _ = sysu_run
    with pytest.raises(CheckpointError) as err:
        _resume(ckpt, keys, tmp_path, "optim.lr_backbone=0.02", "loss.sm_form=mean")
    assert "optim.lr_backbone=0.02 but" in str(err.value)
    assert "loss.sm_form='mean' but" in str(err.value)


def test_settings_that_may_change(sysu_run, tmp_path):
    """Extending a run, other workers, monitoring, logger, search mode: accepted."""
    ckpt, keys, _ = sysu_run
    cfg = compose_config("train", [*keys, f"ckpt={ckpt}", f"paths.output_dir={tmp_path}",
                                   "trainer.max_epochs=120", "data.num_workers=auto",
                                   "data.test_batch_size=32", "eval.every_n_epochs=5",
                                   "logger=none", "mode=indoor", "dataset.trial=4",
                                   f"dataset.cache_dir={tmp_path / 'c'}",
                                   "test_after_training=false"])
    check_resume(cfg, load_checkpoint(ckpt), str(ckpt))  # does not raise


def test_moved_data_with_other_identities_refused_before_caching(sysu_run, tmp_path):
    ckpt, keys, _ = sysu_run
    other = sysu_tree(tmp_path / "other", num_train=9)
    with pytest.raises(CheckpointError, match=r"not the data it was trained on \(here vs "
                                              r"checkpoint: num_classes 11 vs 8"):
        _resume(ckpt, keys, tmp_path, f"dataset.root={other}")
    assert not (other / "tskd_cache").exists()


def test_not_a_tskd_checkpoint_refused_before_training(sysu_run, tmp_path):
    _, keys, root = sysu_run
    raw = tmp_path / "dump.ckpt"
    torch.save(torch.nn.Linear(50, 60).state_dict(), raw)  # a raw 12 KB state dict
    assert 10_000 < raw.stat().st_size < 16_000
    with pytest.raises(CheckpointError, match="is not a tskd checkpoint"):
        _resume(raw, keys, tmp_path)
    assert not (root / "tskd_cache").exists() and not (tmp_path / "run").exists()


def test_other_regdb_split_refused(tmp_path):
    root = regdb_tree(tmp_path / "RegDB")
    keys = ["dataset=regdb", f"dataset.root={root}", "trainer=cpu", *SMALL]
    ckpt = write_checkpoint(tmp_path / "last.ckpt", [*keys, "dataset.trial=3"])
    with pytest.raises(CheckpointError, match=r"dataset.trial=5 but the checkpoint was trained "
                                              r"with dataset.trial=3 \(another RegDB split puts"):
        _resume(ckpt, keys, tmp_path, "dataset.trial=5")
    assert not (root / "tskd_cache").exists()
